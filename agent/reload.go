package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/sdnotify"
)

// config is the configuration in force: the one loaded at start, with the
// resources and subscriptions of the last reload.
func (a *Agent) config() *Config { return a.conf.Load() }

// producer is one resource's extraction loop.
type producer struct {
	entry  Entry
	cancel context.CancelFunc
	done   chan struct{}
}

// startProducer opens a resource and runs its extraction until ctx ends or
// the resource is stopped by a reload. Callers hold prodMu.
func (a *Agent) startProducer(ctx context.Context, r Entry) {
	pctx, cancel := context.WithCancel(ctx)
	p := &producer{entry: r, cancel: cancel, done: make(chan struct{})}
	a.producers[r.ID] = p
	go func() {
		defer close(p.done)
		if src := a.openSource(pctx, r); src != nil {
			a.produceLoop(pctx, r.ID, src)
		}
	}()
}

// stopProducer ends a resource's extraction and closes its source;
// forget also drops what status says of the resource (a reload removed or
// changed it). Callers hold prodMu.
func (a *Agent) stopProducer(id string, forget bool) {
	p := a.producers[id]
	if p == nil {
		return
	}
	p.cancel()
	<-p.done
	delete(a.producers, id)
	a.mu.Lock()
	if s := a.sources[id]; s != nil {
		s.Close()
		delete(a.sources, id)
	}
	a.mu.Unlock()
	if forget {
		a.state.clearStopped(id, "resource")
	}
}

// stopProducers ends every extraction, at shutdown.
func (a *Agent) stopProducers() {
	a.prodMu.Lock()
	defer a.prodMu.Unlock()
	for id := range a.producers {
		a.stopProducer(id, false) // status keeps showing why a resource could not open
	}
}

// sameEntry reports whether a reload leaves an entry as it was.
func sameEntry(x, y Entry) bool {
	return reflect.DeepEqual(x.Common, y.Common) && reflect.DeepEqual(x.Source, y.Source) && reflect.DeepEqual(x.Sink, y.Sink)
}

// Reload reads the configuration file again (SIGHUP, systemctl reload) and
// applies its resources and subscriptions: new resources start, removed
// ones stop, changed ones start over from their checkpoints, and changed
// subscriptions reopen at their next batch. The hub connection, the
// spool and everything in flight stay. Settings that need a restart (the
// hub, the state folder, the transport…) are reported, not applied. A file
// that does not load changes nothing.
func (a *Agent) Reload(ctx context.Context, path string) error {
	sdnotify.Notify(sdnotify.ReloadingNow())
	defer sdnotify.Notify(sdnotify.Ready)
	next, err := LoadConfig(path)
	if err != nil {
		return fmt.Errorf("reload: %w; the running configuration stays", err)
	}
	a.prodMu.Lock()
	defer a.prodMu.Unlock()
	cur := a.config()
	for _, f := range restartOnly(cur, &next) {
		a.log.Warn("reload: this setting changes only at a restart (systemctl restart qz-agent)", "setting", f)
	}
	applied := *cur
	applied.Resources, applied.Subscriptions = next.Resources, next.Subscriptions
	applied.Limits = next.Limits
	keep := map[string]bool{}
	for _, r := range next.Resources {
		if p := a.producers[r.ID]; p != nil && sameEntry(p.entry, r) {
			keep[r.ID] = true
		}
	}
	var started, stopped []string
	for id := range a.producers {
		if !keep[id] {
			a.stopProducer(id, true)
			stopped = append(stopped, id)
		}
	}
	a.limitsMu.Lock()
	a.agentLimits = newLimiters(&applied.Limits)
	limits := map[string]*limiters{}
	for _, r := range next.Resources {
		if l := a.limits[r.ID]; keep[r.ID] && l != nil {
			limits[r.ID] = l
		} else {
			limits[r.ID] = newLimiters(r.Limits)
		}
	}
	a.limits = limits
	a.limitsMu.Unlock()
	a.conf.Store(&applied)
	if ctx.Err() == nil {
		for _, r := range next.Resources {
			if !keep[r.ID] {
				a.startProducer(ctx, r)
				started = append(started, r.ID)
			}
		}
	}
	a.reloadSinks(cur.Subscriptions, next.Subscriptions)
	a.log.Info("configuration reloaded", "resources", len(next.Resources), "subscriptions", len(next.Subscriptions), "started", started, "stopped", stopped)
	if len(started)+len(stopped) > 0 {
		a.reregister.Store(true)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := a.register(rctx); err == nil {
			a.reregister.Store(false)
		} else {
			a.fail(errHub)
			a.log.Warn("cannot declare the reloaded resources to the hub yet; trying again", "err", err)
		}
	}
	return nil
}

// reloadSinks closes the sinks of changed or removed subscriptions; the
// next batch for them opens the new configuration.
func (a *Agent) reloadSinks(old, next []Entry) {
	after := map[string]Entry{}
	for _, e := range next {
		after[e.ID] = e
	}
	a.applyMu.Lock() // not in the middle of an apply
	defer a.applyMu.Unlock()
	for _, e := range old {
		if n, ok := after[e.ID]; ok && sameEntry(n, e) {
			continue
		}
		a.mu.Lock()
		if s := a.sinks[e.ID]; s != nil {
			s.Close()
			delete(a.sinks, e.ID)
		}
		a.mu.Unlock()
	}
	for _, e := range next {
		a.mu.Lock()
		if s := a.sinks[e.ID]; s != nil && !contains(old, e.ID) {
			// A default folder sink replaced by a configured subscription.
			s.Close()
			delete(a.sinks, e.ID)
		}
		a.mu.Unlock()
	}
}

func contains(es []Entry, id string) bool {
	for _, e := range es {
		if e.ID == id {
			return true
		}
	}
	return false
}

// restartOnly names the settings that differ but apply only at a restart.
func restartOnly(cur, next *Config) []string {
	var out []string
	check := func(name string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			out = append(out, name)
		}
	}
	check("hub", cur.Hub, next.Hub)
	check("transport", cur.Transport, next.Transport)
	check("retry_quic", cur.RetryQUIC, next.RetryQUIC)
	check("state_dir", cur.StateDir, next.StateDir)
	check("spool", cur.Spool, next.Spool)
	check("batch", cur.Batch, next.Batch)
	check("poll", cur.Poll, next.Poll)
	check("log_level", cur.LogLevel, next.LogLevel)
	check("metrics_listen", cur.MetricsListen, next.MetricsListen)
	return out
}

// register declares this node's resources (and their catalog entries) to
// the hub.
func (a *Agent) register(ctx context.Context) error {
	var decls []api.ResourceDecl
	for _, r := range a.config().Resources {
		decls = append(decls, api.ResourceDecl{ID: r.ID, Kind: r.Kind, Catalog: r.Catalog})
	}
	return a.call(ctx, http.MethodPost, "/v1/resources", decls, nil)
}

// handleReloads reloads on each signal until ctx ends.
func (a *Agent) handleReloads(ctx context.Context, path string, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			if err := a.Reload(ctx, path); err != nil {
				a.log.Error("configuration not reloaded", "err", err)
			}
		}
	}
}
