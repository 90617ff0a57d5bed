package agent

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qianzhi/qianzhi/pkg/metrics"
	"github.com/qianzhi/qianzhi/transport"
)

// Kinds of error counted in qz_errors_total.
const (
	errHub    = "hub"      // a request to the hub failed
	errSource = "source"   // a resource could not be opened or read
	errUpload = "upload"   // an upload failed (it resumes)
	errApply  = "apply"    // a delivery could not be downloaded or applied
	errReject = "rejected" // a batch was refused by its receiver
	errRenew  = "renew"    // the certificate could not be renewed yet
	errSpool  = "spool"    // the spool index or a spooled batch is damaged
)

// agentMetrics are the series of /metrics. Counters count since the
// process started, as Prometheus expects; qz-agent status keeps totals.
type agentMetrics struct {
	reg      *prometheus.Registry
	batches  *prometheus.CounterVec
	rows     *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	lagMu    sync.Mutex
	lagIn    map[string]float64 // by resource: the last applied batch's
	connects prometheus.Counter
	errors   *prometheus.CounterVec
	calls    *prometheus.CounterVec
}

func newAgentMetrics(a *Agent) *agentMetrics {
	byRes := []string{"resource", "direction"}
	m := &agentMetrics{
		reg: metrics.NewRegistry(),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "batches_total",
			Help: "Batches sealed (direction out) or applied (direction in), by resource."}, byRes),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "rows_total",
			Help: "Table rows sealed (out) or applied (in), by resource."}, byRes),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "bytes_total",
			Help: "Batch bytes sealed (out) or applied (in), by resource, as stored (compressed)."}, byRes),
		lagIn: map[string]float64{},
		connects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "hub_connects_total",
			Help: "Connections made to the hub (one while the link holds)."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "errors_total",
			Help: "Errors by kind: hub, source, upload, apply, rejected, renew, spool."}, []string{"kind"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "calls_total",
			Help: "Calls this provider served, by resource, mode and status: answered, refused, failed, late."}, []string{"resource", "mode", "status"}),
	}
	for _, k := range []string{errHub, errSource, errUpload, errApply, errReject, errRenew, errSpool} {
		m.errors.WithLabelValues(k) // every kind shows, at 0
	}
	gauge := func(name, help string, fn func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: name, Help: help}, fn)
	}
	m.reg.MustRegister(m.batches, m.rows, m.bytes, m.connects, m.errors, m.calls,
		gauge("spool_bytes", "Bytes of batches in the spool.", func() float64 { used, _ := a.spool.usage(); return float64(used) }),
		gauge("spool_quota_bytes", "The spool's quota (spool.quota).", func() float64 { return float64(a.spool.quota) }),
		gauge("hub_connected", "1 while a connection to the hub is up.", func() float64 {
			if a.hub.Transport() != "" {
				return 1
			}
			return 0
		}),
		gauge("certificate_expiry_seconds", "Seconds until this node's certificate expires (renewed at a third of its life left).", func() float64 {
			return time.Until(a.id.leaf().NotAfter).Seconds()
		}),
		transportCollector{a.hub}, lagCollector{a},
	)
	return m
}

// transportCollector reports qz_hub_transport{transport}: 1 for the one in
// use, 0 for the other.
type transportCollector struct{ hub *transport.Client }

var transportDesc = prometheus.NewDesc(metrics.Namespace+"_hub_transport", "The transport to the hub in use: 1 for it, 0 for the other.", []string{"transport"}, nil)

func (c transportCollector) Describe(ch chan<- *prometheus.Desc) { ch <- transportDesc }

func (c transportCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.hub.Transport()
	for _, t := range []string{transport.QUIC, transport.TCP} {
		v := 0.0
		if t == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(transportDesc, prometheus.GaugeValue, v, t)
	}
}

func (m *agentMetrics) sealed(resource string, rows, size int64) {
	m.batches.WithLabelValues(resource, "out").Inc()
	m.rows.WithLabelValues(resource, "out").Add(float64(rows))
	m.bytes.WithLabelValues(resource, "out").Add(float64(size))
}

func (m *agentMetrics) applied(resource string, rows, size int64, lag time.Duration) {
	m.batches.WithLabelValues(resource, "in").Inc()
	m.rows.WithLabelValues(resource, "in").Add(float64(rows))
	m.bytes.WithLabelValues(resource, "in").Add(float64(size))
	m.lagMu.Lock()
	m.lagIn[resource] = max(lag.Seconds(), 0)
	m.lagMu.Unlock()
}

// lagCollector reports qz_lag_seconds. Direction out: how long the oldest
// batch of each resource has waited in the spool, which grows while the
// hub is away, as an alert wants. Direction in: from the provider sealing
// the last applied batch to its apply here.
type lagCollector struct{ a *Agent }

var lagDesc = prometheus.NewDesc(metrics.Namespace+"_lag_seconds",
	"Direction out: age of the oldest batch waiting in the spool (0 when none). Direction in: from the last applied batch's sealing at the provider to its apply here.",
	[]string{"resource", "direction"}, nil)

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagDesc }

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.a.metrics
	m.lagMu.Lock()
	for r, v := range m.lagIn {
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, v, r, "in")
	}
	m.lagMu.Unlock()
	es, err := c.a.state.spooled()
	if err != nil {
		return
	}
	oldest := map[string]time.Time{}
	for _, r := range c.a.config().Resources {
		oldest[r.ID] = time.Time{}
	}
	for _, e := range es {
		fi, err := os.Stat(c.a.spoolPath(e.File))
		if err != nil {
			continue
		}
		if t, ok := oldest[e.Resource]; !ok || t.IsZero() || fi.ModTime().Before(t) {
			oldest[e.Resource] = fi.ModTime()
		}
	}
	for r, t := range oldest {
		v := 0.0
		if !t.IsZero() {
			v = max(time.Since(t).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, v, r, "out")
	}
}

// fail counts an error of a kind.
func (a *Agent) fail(kind string) { a.metrics.errors.WithLabelValues(kind).Inc() }

// health is /healthz: the state database answers. The hub's reachability
// is shown but does not fail it: the agent is working (spooling) while
// the hub is away.
func (a *Agent) health(ctx context.Context) (map[string]any, error) {
	d := map[string]any{"node": a.id.NodeID, "hub": a.cfg.Hub, "transport": a.hub.Transport()}
	return d, a.state.db.PingContext(ctx)
}

// serveMetrics starts /metrics and /healthz when configured. A port in use
// is logged, not fatal: data exchange matters more than its dashboard.
func (a *Agent) serveMetrics() func() {
	if metrics.Off(a.cfg.MetricsListen) {
		return func() {}
	}
	s, err := metrics.Listen(a.cfg.MetricsListen, a.metrics.reg, a.health, a.log)
	if err != nil {
		a.log.Error("metrics endpoint not started", "err", err)
		return func() {}
	}
	a.state.setRuntime("metrics", s.Addr())
	a.log.Info("metrics endpoint listening", "addr", s.Addr())
	return func() {
		s.Close()
		a.state.setRuntime("metrics", "")
	}
}
