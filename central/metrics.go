package central

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qianzhi/qianzhi/pkg/metrics"
)

// Kinds of error counted in qz_errors_total on the hub.
const (
	errHandshake = "handshake" // a certificate refused at the handshake
	errRejected  = "rejected"  // an uploaded batch failed verification
	errInternal  = "internal"  // a request failed on the hub's side
	errRefused   = "refused"   // a node's request was refused (no grant, revoked…)
)

// hubMetrics are the hub's /metrics series.
type hubMetrics struct {
	reg     *prometheus.Registry
	batches *prometheus.CounterVec
	rows    *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	errors  *prometheus.CounterVec

	calls       *prometheus.CounterVec
	callSeconds *prometheus.HistogramVec

	seenMu sync.Mutex
	seen   map[string]time.Time // node → its last request
	saved  map[string]time.Time // node → when that was last written to the store
}

func newHubMetrics(h *Hub) *hubMetrics {
	byRes := []string{"resource", "direction"}
	m := &hubMetrics{
		reg: metrics.NewRegistry(),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "batches_total",
			Help: "Batches stored from providers (direction in) and delivered in full to consumers (direction out), by resource."}, byRes),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "rows_total",
			Help: "Table rows in the batches stored (in) and delivered (out), by resource."}, byRes),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "bytes_total",
			Help: "Batch bytes stored (in) and delivered (out), by resource."}, byRes),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "errors_total",
			Help: "Errors by kind: handshake, rejected, internal, refused."}, []string{"kind"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "calls_total",
			Help: "Query and verify calls by mode and status: answered, refused (by the hub's checks), failed (the provider could not answer, or its answer failed the receipt check), timeout (no answer in time, or the provider not connected)."}, []string{"mode", "status"}),
		callSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metrics.Namespace, Name: "call_seconds",
			Help:    "Time from the hub receiving an answered call to its answer, by mode.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}, []string{"mode"}),
		seen: map[string]time.Time{}, saved: map[string]time.Time{},
	}
	for _, k := range []string{errHandshake, errRejected, errInternal, errRefused} {
		m.errors.WithLabelValues(k)
	}
	m.reg.MustRegister(m.batches, m.rows, m.bytes, m.errors, m.calls, m.callSeconds, nodesCollector{h})
	return m
}

// node notes a node's request, for qz_node_last_seen_seconds, and in the
// store (for qz-central status) at most once a minute per node.
func (h *Hub) seen(id string) {
	m := h.metrics
	now := time.Now()
	m.seenMu.Lock()
	m.seen[id] = now
	save := now.Sub(m.saved[id]) >= time.Minute
	if save {
		m.saved[id] = now
	}
	m.seenMu.Unlock()
	if save {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := h.store.TouchNode(ctx, id, now); err != nil {
				h.log.Warn("cannot record when a node was last seen", "node", id, "err", err)
			}
		}()
	}
}

var (
	nodesDesc = prometheus.NewDesc(metrics.Namespace+"_nodes", "Nodes by status (pending, active, revoked).", []string{"status"}, nil)
	seenDesc  = prometheus.NewDesc(metrics.Namespace+"_node_last_seen_seconds",
		"Seconds since each active node's last request (an agent asks at least every 25 s while connected); absent for a node not seen since the hub started.", []string{"node"}, nil)
	certDesc   = prometheus.NewDesc(metrics.Namespace+"_node_certificate_expiry_seconds", "Seconds until each active node's certificate expires (agents renew at a third of its life left).", []string{"node"}, nil)
	storedDesc = prometheus.NewDesc(metrics.Namespace+"_stored_bytes", "Bytes of batch payloads held for delivery or retention.", nil, nil)
	heldDesc   = prometheus.NewDesc(metrics.Namespace+"_provider_held_bytes",
		"Bytes each provider holds at the hub against its quota: batches stored and not yet receipted under active grants, and unfinished uploads (an upload in progress with the size it declared).", []string{"provider"}, nil)
	quotaDesc = prometheus.NewDesc(metrics.Namespace+"_provider_quota_bytes", "The quota of held bytes each provider has (provider_quota); uploads past it are refused with 507.", nil, nil)
)

// nodesCollector reads nodes and stored payloads from the store at scrape.
type nodesCollector struct{ h *Hub }

func (c nodesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- seenDesc
	ch <- certDesc
	ch <- storedDesc
	ch <- heldDesc
	ch <- quotaDesc
}

func (c nodesCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns, err := c.h.store.Nodes(ctx)
	if err != nil {
		c.h.log.Warn("metrics: cannot read nodes", "err", err)
		return
	}
	count := map[string]int{"pending": 0, "active": 0, "revoked": 0}
	m := c.h.metrics
	m.seenMu.Lock()
	defer m.seenMu.Unlock()
	for _, n := range ns {
		count[n.Status]++
		if n.Status != "active" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(certDesc, prometheus.GaugeValue, time.Until(n.CertExpiry).Seconds(), n.ID)
		if t, ok := m.seen[n.ID]; ok {
			ch <- prometheus.MustNewConstMetric(seenDesc, prometheus.GaugeValue, time.Since(t).Seconds(), n.ID)
		}
	}
	for s, k := range count {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(k), s)
	}
	if n, err := c.h.store.StoredBytes(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(storedDesc, prometheus.GaugeValue, float64(n))
	}
	if held, err := c.h.heldBytes(ctx); err == nil {
		for p, n := range held {
			ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, float64(n), p)
		}
	}
	ch <- prometheus.MustNewConstMetric(quotaDesc, prometheus.GaugeValue, float64(c.h.cfg.ProviderQuota))
}

// health is the hub's /healthz: its database answers.
func (h *Hub) health(ctx context.Context) (map[string]any, error) {
	_, err := h.store.Nodes(ctx)
	return map[string]any{"listen": h.cfg.Listen}, err
}
