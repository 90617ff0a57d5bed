package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/sdnotify"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// Agent is a running qz-agent.
type Agent struct {
	cfg   Config
	id    *Identity
	state *State
	spool *spool
	hub   *transport.Client
	log   *slog.Logger
	lock  *os.File

	mu         sync.Mutex
	sources    map[string]connectors.Source // by resource ID, once open
	grants     []api.GrantInfo
	approvals  []BoundApproval            // this node's own, matched to grants (see decide.go)
	grantsGen  chan struct{}              // closed and replaced when grants change
	sinks      map[string]connectors.Sink // by resource ID
	sealKeys   map[string]seal.PublicKey  // by "node/key ID"
	fresh      map[string]bool            // spool files sealed by this process, not yet tried
	uploadKick chan struct{}
	maskKey    []byte     // this node's masking secret (see pkg/mask)
	applyMu    sync.Mutex // one apply or destruction at a time
	copyMu     sync.Mutex // read-modify-write of a grant's copy record

	limitsMu    sync.Mutex
	limits      map[string]*limiters // by resource
	agentLimits *limiters
	metrics     *agentMetrics

	conf       atomic.Pointer[Config] // what a reload may change (see config)
	prodMu     sync.Mutex             // starting and stopping producers
	producers  map[string]*producer   // by resource
	reregister atomic.Bool            // resources changed: declare them to the hub again
}

// New opens the agent's state and identity. Sources start watching now;
// nothing talks to the hub until Serve.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.spoolDir(), cfg.inboxDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("prepare %s: %w", d, err)
		}
	}
	lock, err := lockDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		lock.Close()
		return nil, err
	}
	a := &Agent{
		cfg: cfg, id: id, state: st, lock: lock, log: log.With("node", id.NodeID),
		sources: map[string]connectors.Source{}, sinks: map[string]connectors.Sink{},
		sealKeys: map[string]seal.PublicKey{}, fresh: map[string]bool{}, grantsGen: make(chan struct{}),
		uploadKick: make(chan struct{}, 1),
		limits:     map[string]*limiters{}, agentLimits: newLimiters(&cfg.Limits),
		producers: map[string]*producer{},
	}
	a.conf.Store(&cfg)
	for _, r := range cfg.Resources {
		a.limits[r.ID] = newLimiters(r.Limits)
	}
	a.hub = &transport.Client{Hub: cfg.Hub, TLS: id.ClientTLS(cfg.Hub), Mode: cfg.Transport, Logger: a.log, RetryQUIC: cfg.RetryQUIC,
		OnConnect: func(m string) {
			a.metrics.connects.Inc()
			st.setRuntime("transport", m)
			st.setRuntime("connected", time.Now().UTC().Format(time.RFC3339))
		}}
	if a.spool, err = openSpool(cfg.spoolDir(), int64(cfg.Spool.Quota), st); err != nil {
		st.Close()
		lock.Close()
		return nil, err
	}
	a.metrics = newAgentMetrics(a)
	if gs, err := st.loadGrants(); err == nil {
		a.grants = gs
	}
	a.approvals, _ = st.Approvals(context.Background())
	if a.maskKey, err = loadOrCreateMaskKey(cfg.identityDir()); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Close releases everything New and Serve opened.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.sources {
		s.Close()
	}
	for _, s := range a.sinks {
		s.Close()
	}
	a.hub.Close()
	err := a.state.Close()
	a.lock.Close()
	return err
}

// lockDir takes an exclusive lock on the state folder: two agents on one
// state would hand out the same sequence numbers and delete each other's
// spool files.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state folder: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another qz-agent is already running with state folder %s; stop it first (systemctl stop qz-agent)", dir)
	}
	return f, nil
}

// NodeID is the enrolled node's ID.
func (a *Agent) NodeID() string { return a.id.NodeID }

// Serve runs the agent until ctx ends. Each value from reload (SIGHUP)
// reloads the configuration from path.
func (a *Agent) Serve(ctx context.Context, path string, reload <-chan os.Signal) error {
	a.log.Info("agent starting", "hub", a.cfg.Hub, "transport", a.cfg.Transport, "resources", len(a.cfg.Resources))
	var wg sync.WaitGroup
	run := func(name string, fn func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(ctx)
			a.log.Debug("loop stopped", "loop", name)
		}()
	}
	run("watch", func(ctx context.Context) { a.hub.Watch(ctx, 5*time.Second) })
	run("grants", a.grantLoop)
	a.prodMu.Lock()
	for _, r := range a.cfg.Resources {
		a.startProducer(ctx, r)
	}
	a.prodMu.Unlock()
	run("reload", func(ctx context.Context) { a.handleReloads(ctx, path, reload) })
	run("upload", a.uploadLoop)
	run("heal", a.healLoop)
	run("consume", a.consumeLoop)
	run("reconcile", a.reconcileLoop)
	run("destroy", a.destroyLoop)
	run("copy", a.copyLoop)
	run("renew", a.renewLoop)
	run("calls", a.callLoop)
	run("checkpoints", a.checkpointLoop)
	run("watchdog", func(ctx context.Context) { sdnotify.RunWatchdog(ctx, a.state.db.PingContext) })
	stopMetrics := a.serveMetrics()
	defer stopMetrics()
	if addr, stop, err := a.serveCallAPI(ctx); err != nil {
		a.log.Error("call API not started; applications cannot make calls through this agent", "err", err)
	} else if addr != "" {
		defer stop()
		a.log.Info("call API listening", "addr", addr, "token_file", a.cfg.callTokenFile())
	}
	if err := sdnotify.Notify(sdnotify.Ready); err != nil {
		a.log.Warn("cannot tell systemd the agent is ready", "err", err)
	}
	<-ctx.Done()
	sdnotify.Notify(sdnotify.Stopping)
	wg.Wait()
	a.stopProducers()
	a.log.Info("agent stopped")
	return nil
}

// openSource opens a resource, trying again every 6 polls (30 s by
// default) while it fails (a
// database not up yet, a table not created yet): one resource that cannot
// be read holds back neither the others nor what this node receives. The
// failure shows in qz-agent status; qz-agent config check reports it at
// once.
func (a *Agent) openSource(ctx context.Context, r Entry) connectors.Source {
	log := a.log.With("resource", r.ID)
	for attempt := 0; ; attempt++ {
		src, err := r.Source.OpenSource(log)
		if err == nil {
			a.mu.Lock()
			defer a.mu.Unlock()
			if ctx.Err() != nil {
				src.Close()
				return nil
			}
			a.sources[r.ID] = src
			if attempt > 0 {
				a.state.clearStopped(r.ID, "resource")
				log.Info("resource opened; extraction starts")
			}
			return src
		}
		a.fail(errSource)
		if attempt == 0 {
			a.state.setStopped(r.ID, "resource", err.Error())
		}
		if attempt%10 == 0 {
			log.Error("resource cannot be opened; trying again", "every", 6*a.cfg.Poll, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(6 * a.cfg.Poll):
		}
	}
}

// backoff sleeps for an increasing delay, returning false if ctx ended.
func backoff(ctx context.Context, attempt int) bool {
	return sleepCtx(ctx, min(time.Duration(1<<min(attempt, 5))*250*time.Millisecond, 10*time.Second))
}

// sleepCtx sleeps for d, returning false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// call sends a JSON request to the hub and decodes a JSON answer.
func (a *Agent) call(ctx context.Context, method, path string, in, out any) error {
	return call(ctx, a.hub, method, path, in, out)
}

func call(ctx context.Context, hub *transport.Client, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, hub.URL(path), body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hub.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return &hubError{Status: resp.StatusCode, Msg: apiError(resp)}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	io.Copy(io.Discard, resp.Body)
	return nil
}

// hubError is a refusal by the hub, as opposed to a network failure.
type hubError struct {
	Status int
	Msg    string
}

func (e *hubError) Error() string { return fmt.Sprintf("hub answered %d: %s", e.Status, e.Msg) }

// grantLoop registers this node's resources and follows its grants with a
// long poll, so a new or revoked grant takes effect within a second.
func (a *Agent) grantLoop(ctx context.Context) {
	registered := false
	fails := 0
	version := ""
	for {
		if !registered || a.reregister.Swap(false) {
			registered = false
			if err := a.register(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				a.fail(errHub)
				a.log.Warn("cannot register resources with the hub; retrying", "err", err)
			} else {
				registered = true
			}
		}
		asked := time.Now()
		gs, v, err := a.fetchGrants(ctx, version)
		if err == nil {
			fails = 0
			quick := v == "" || (v == version && time.Since(asked) < time.Second)
			version = v
			a.setGrants(ctx, gs)
			if registered && !quick {
				continue
			}
			// A hub that does not hold the poll open (an older one, say)
			// is asked again after the poll interval, not at once.
		} else {
			if ctx.Err() != nil {
				return
			}
			fails++
			a.fail(errHub)
			if fails == 1 || fails%60 == 0 {
				a.log.Warn("cannot reach the hub; working from the last known grants", "err", err)
			}
		}
		t := time.NewTimer(a.cfg.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (a *Agent) fetchGrants(ctx context.Context, version string) ([]api.GrantInfo, string, error) {
	q := url.Values{"wait": {"25s"}, "version": {version}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.hub.URL("/v1/grants?"+q.Encode()), nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := a.hub.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", &hubError{Status: resp.StatusCode, Msg: apiError(resp)}
	}
	var gs []api.GrantInfo
	if err := json.NewDecoder(resp.Body).Decode(&gs); err != nil {
		return nil, "", err
	}
	return a.wellFormed(gs), resp.Header.Get(api.HeaderVersion), nil
}

// wellFormed drops grants whose IDs could not be used safely: a grant ID
// and a resource ID name files in the spool and the inbox, so one the hub
// sends with a '/' or '..' in it must never reach a path.
func (a *Agent) wellFormed(gs []api.GrantInfo) []api.GrantInfo {
	out := gs[:0]
	for _, g := range gs {
		err := errors.Join(api.ValidID("grant", g.ID), api.ValidID("resource", g.Resource))
		if err != nil {
			a.log.Warn("hub listed a malformed grant; ignored", "err", err)
			continue
		}
		out = append(out, g)
	}
	return out
}

func (a *Agent) setGrants(ctx context.Context, gs []api.GrantInfo) {
	sort.Slice(gs, func(i, j int) bool { return gs[i].ID < gs[j].ID })
	// This node's approvals are read on every answer of the long poll:
	// 'qz-agent approve' adds them from beside the running agent.
	aps := a.matchApprovals(ctx, gs)
	a.mu.Lock()
	same := fmt.Sprint(gs) == fmt.Sprint(a.grants)
	sameApprovals := fmt.Sprint(aps) == fmt.Sprint(a.approvals)
	if !same || !sameApprovals {
		a.grants, a.approvals = gs, aps
		close(a.grantsGen)
		a.grantsGen = make(chan struct{})
	}
	a.mu.Unlock()
	if !same {
		a.log.Info("grants changed", "count", len(gs))
		if err := a.state.saveGrants(ctx, gs); err != nil {
			a.log.Error("cannot save grants", "err", err)
		}
	}
	a.reviewGrants(ctx)
}

// providerGrants lists the active batch-mode grants to produce for one
// resource: a query or verify grant answers calls and never gets copies.
// A grant this node does not approve of itself (see judge) is left out.
func (a *Agent) providerGrants(resource string) ([]api.GrantInfo, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []api.GrantInfo
	now := time.Now()
	for _, g := range a.grants {
		if g.Provider == a.id.NodeID && g.Resource == resource && g.Active && g.Mode == api.ModeBatch && (g.Expires.IsZero() || now.Before(g.Expires)) &&
			a.refusal(g) == "" {
			out = append(out, g)
		}
	}
	return out, a.grantsGen
}

// grantActive returns a grant and whether it is active: for a grant this
// node provides, also that this node serves it.
func (a *Agent) grantActive(id string) (api.GrantInfo, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range a.grants {
		if g.ID == id {
			return g, g.Active && (g.Provider != a.id.NodeID || a.refusal(g) == "")
		}
	}
	return api.GrantInfo{}, false
}

func batchName(grant string, seq uint64) string {
	return grant + "-" + strconv.FormatUint(seq, 10) + ".qzb"
}

func (a *Agent) spoolPath(name string) string { return filepath.Join(a.cfg.spoolDir(), name) }
