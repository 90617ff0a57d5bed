package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
)

// Reconcile asks the running agent (or the next one to start) to compare a
// table resource with each consumer's copy and resend what differs; see
// connectors/sqltable/reconcile.go. It returns the grants it applies to.
func Reconcile(ctx context.Context, cfg Config, resource string) ([]string, error) {
	found := false
	for _, r := range cfg.Resources {
		if r.ID == resource {
			found = true
			if _, ok := r.Source.(*sqltable.SourceConfig); !ok {
				return nil, fmt.Errorf("resource %s is a %s resource: reconcile compares tables (folders are compared file by file as they are rescanned)", resource, r.Kind)
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("resource %s is not in %s: reconcile runs on the provider's agent", resource, "the config")
	}
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return nil, err
	}
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	gs, err := st.loadGrants()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, g := range gs {
		if g.Resource != resource || g.Provider != id.NodeID {
			continue
		}
		var ch connectors.Changes
		ch.Put(sqltable.KeyReconcileRequest, []byte(time.Now().UTC().Format(time.RFC3339)))
		if err := st.commitChanges(ctx, "src/"+g.ID, &ch); err != nil {
			return nil, err
		}
		out = append(out, g.ID+" → "+g.Consumer)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no consumer has a grant for %s yet (or this agent has not heard of it: is it running?)", resource)
	}
	return out, nil
}

func printReconcile(w io.Writer, resource string, grants []string) {
	fmt.Fprintf(w, "reconciliation of %s requested for %d grant(s):\n", resource, len(grants))
	for _, g := range grants {
		fmt.Fprintf(w, "  %s\n", g)
	}
	fmt.Fprintln(w, "the running agent compares and resends the difference; its log shows the progress")
}

// reconcileLoop hands each consumer's answer to a reconcile digest — the
// buckets that differ, in its signed receipt — back to the source.
func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		waits, err := a.state.withKey(sqltable.KeyReconcileWait)
		if err != nil {
			a.log.Error("read reconcile state", "err", err)
			continue
		}
		for scope, val := range waits {
			if err := a.reconcileAnswer(ctx, scope, string(val)); err != nil && ctx.Err() == nil {
				a.log.Warn("reconcile: cannot read the consumer's answer yet", "scope", scope, "err", err)
			}
		}
	}
}

func (a *Agent) reconcileAnswer(ctx context.Context, scope, val string) error {
	grant := strings.TrimPrefix(scope, "src/")
	var ch connectors.Changes
	g, ok := a.grantActive(grant)
	if !ok {
		ch.Delete(sqltable.KeyReconcileWait)
		return a.state.commitChanges(ctx, scope, &ch)
	}
	seq, err := strconv.ParseUint(val, 10, 64)
	if err != nil {
		return err
	}
	rc, err := a.receiptFor(ctx, g, seq)
	if err != nil || rc == nil {
		return err // nil: not applied yet
	}
	diff := rc.Mismatch
	if diff == nil {
		diff = []int{}
	}
	raw, _ := json.Marshal(diff)
	ch.Delete(sqltable.KeyReconcileWait)
	ch.Put(sqltable.KeyReconcileDiff, raw)
	if err := a.state.commitChanges(ctx, scope, &ch); err != nil {
		return err
	}
	a.log.Info("reconcile: the consumer compared its copy", "grant", grant, "consumer", g.Consumer, "differing_buckets", len(diff))
	return nil
}

// tableLines reads where each grant's table extraction stands.
func tableLines(st *State) ([]TableLine, error) {
	phases, err := st.withKey(sqltable.KeyPhase)
	if err != nil {
		return nil, err
	}
	var out []TableLine
	for scope := range phases {
		if !strings.HasPrefix(scope, "src/") {
			continue
		}
		l := TableLine{Grant: strings.TrimPrefix(scope, "src/")}
		if l.Phase, l.Position, l.Reconcile, err = sqltable.Progress(st.view(scope)); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b TableLine) int { return strings.Compare(a.Grant, b.Grant) })
	return out, nil
}
