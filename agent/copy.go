package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/pkg/throttle"
)

// A full copy (批量复制) re-sends a resource whole to one consumer under its
// grant, in the grant's own line of batches: the source starts over
// (connectors.Copier), every batch it seals moves the copy's progress in
// the same transaction as its checkpoint, and a kill at any moment resumes
// from the last sealed batch. The copy is done when the consumer's signed
// receipt for its last batch is in.
const (
	keyCopy    = "qz.copy"     // api.Copy JSON: the grant's current or last copy
	keyCopyReq = "qz.copy_req" // api.Copy JSON: a copy qz-agent copy asked for
)

// limiters are the rate limits and copy window of a resource or the agent.
type limiters struct {
	bytes, rows *throttle.Limiter
	window      throttle.Window
}

func newLimiters(l *throttle.Limits) *limiters {
	if l == nil {
		return &limiters{}
	}
	return &limiters{bytes: throttle.New(int64(l.BytesPerSecond)), rows: throttle.New(l.RowsPerSecond), window: l.Window}
}

// limitsOf returns a resource's limiters, then the agent's.
func (a *Agent) limitsOf(resource string) (*limiters, *limiters) {
	a.limitsMu.Lock()
	r, agent := a.limits[resource], a.agentLimits
	a.limitsMu.Unlock()
	if r == nil {
		r = &limiters{}
	}
	return r, agent
}

// copyWindow reports whether copies of a resource may run now and, if not,
// when they may and which window says so.
func (a *Agent) copyWindow(resource string, now time.Time) (bool, time.Time, string) {
	r, ag := a.limitsOf(resource)
	open, next, which := true, now, ""
	for _, w := range []throttle.Window{r.window, ag.window} {
		if ok, at := w.Open(now); !ok {
			open = false
			if at.After(next) {
				next, which = at, w.String()
			}
		}
	}
	return open, next, which
}

func newCopyID() string {
	var b [3]byte
	rand.Read(b[:])
	return "copy-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

func loadCopy(st connectors.State, key string) (*api.Copy, error) {
	raw, ok, err := st.Get(key)
	if err != nil || !ok {
		return nil, err
	}
	var c api.Copy
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("copy state %s: %w", key, err)
	}
	return &c, nil
}

func putCopy(ch *connectors.Changes, c *api.Copy) {
	raw, _ := json.Marshal(c)
	ch.Put(keyCopy, raw)
}

// copyBefore runs before each batch of a grant: it starts a copy that was
// asked for or is due by the resource's schedule, and holds copies (and a
// table's first snapshot) outside the copy window. It reports whether the
// grant must wait.
func (a *Agent) copyBefore(ctx context.Context, src connectors.Source, resource string, g api.GrantInfo) (bool, error) {
	a.copyMu.Lock()
	defer a.copyMu.Unlock()
	scope := "src/" + g.ID
	v := a.state.view(scope)
	job, err := loadCopy(v, keyCopy)
	if err != nil {
		return false, err
	}
	req, err := loadCopy(v, keyCopyReq)
	if err != nil {
		return false, err
	}
	c, canCopy := src.(connectors.Copier)
	var ch connectors.Changes
	switch {
	case req != nil && job != nil && job.Active():
		// One copy at a time; the one under way already sends everything.
		ch.Delete(keyCopyReq)
		a.log.Info("copy asked for while one is under way; it goes on", "grant", g.ID, "copy", job.ID)
		return false, a.state.commitChanges(ctx, scope, &ch)
	case req != nil && !canCopy:
		ch.Delete(keyCopyReq)
		req.State, req.Reason = api.CopyStopped, "this kind of resource cannot be copied"
		putCopy(&ch, req)
		return false, a.state.commitChanges(ctx, scope, &ch)
	case req == nil && canCopy && a.copyDue(resource, job):
		req = &api.Copy{ID: newCopyID(), Scheduled: true}
	}
	if req != nil {
		size, err := c.StartCopy(ctx, v, &ch)
		if err != nil {
			return false, fmt.Errorf("start copy: %w", err)
		}
		now := time.Now().UTC()
		job = &api.Copy{ID: req.ID, Grant: g.ID, Resource: resource, Provider: a.id.NodeID, Consumer: g.Consumer,
			State: api.CopyRunning, Scheduled: req.Scheduled, TotalRows: size.Rows, TotalFiles: size.Files, TotalBytes: size.Bytes,
			Started: now, Updated: now}
		ch.Delete(keyCopyReq)
		putCopy(&ch, job)
		if err := a.state.commitChanges(ctx, scope, &ch); err != nil {
			return false, err
		}
		a.log.Info("copy started", "grant", g.ID, "consumer", g.Consumer, "copy", job.ID, "rows", size.Rows, "files", size.Files, "bytes", size.Bytes, "scheduled", job.Scheduled)
		ch = connectors.Changes{}
	}
	copying := job != nil && job.Active()
	if !copying && canCopy {
		// A table's first snapshot is a copy too, and keeps the window.
		if copying, err = c.Copying(v); err != nil {
			return false, err
		}
	}
	if !copying {
		return false, nil
	}
	open, next, which := a.copyWindow(resource, time.Now())
	switch {
	case !open && job != nil && job.Active() && job.State != api.CopyWaiting:
		job.State, job.Reason, job.Updated = api.CopyWaiting, fmt.Sprintf("outside the copy window %s; resumes at %s", which, next.Format("15:04:05")), time.Now().UTC()
		putCopy(&ch, job)
		a.log.Info("copy paused outside its window", "grant", g.ID, "copy", job.ID, "window", which, "resumes", next.Format(time.DateTime))
		return true, a.state.commitChanges(ctx, scope, &ch)
	case !open:
		return true, nil
	case job != nil && job.State == api.CopyWaiting:
		job.State, job.Reason, job.Updated = api.CopyRunning, "", time.Now().UTC()
		putCopy(&ch, job)
		a.log.Info("copy window open; copy resumes", "grant", g.ID, "copy", job.ID)
		return false, a.state.commitChanges(ctx, scope, &ch)
	}
	return false, nil
}

// copyAttention reports, without changing anything, whether copyBefore may
// have something to do for a grant: a copy asked for or due, or a window
// that is closed.
func (a *Agent) copyAttention(resource string, g api.GrantInfo) bool {
	v := a.state.view("src/" + g.ID)
	if _, ok, err := v.Get(keyCopyReq); err != nil || ok {
		return true
	}
	if open, _, _ := a.copyWindow(resource, time.Now()); !open {
		return true
	}
	job, err := loadCopy(v, keyCopy)
	return err != nil || a.copyDue(resource, job)
}

// copyDue reports whether a resource's schedule calls for a new copy.
func (a *Agent) copyDue(resource string, last *api.Copy) bool {
	var every time.Duration
	for _, r := range a.config().Resources {
		if r.ID == resource && r.Copy != nil {
			every = r.Copy.Every
		}
	}
	switch {
	case every == 0:
		return false
	case last == nil:
		return true
	case last.State != api.CopyDone && last.State != api.CopyStopped:
		return false
	}
	return time.Since(last.Finished) >= every
}

// copySealed stages a sealed batch's share of the grant's copy, if one is
// under way, in the batch's own commit.
func (a *Agent) copySealed(g api.GrantInfo, seq uint64, size int64, out *connectors.Output) error {
	job, err := loadCopy(a.state.view("src/"+g.ID), keyCopy)
	if err != nil || job == nil || !job.Active() {
		return err
	}
	job.Rows += out.Rows
	job.Bytes += int64(len(out.Body))
	job.Files += filesDone(out.Files)
	job.Sent += size
	job.Batches++
	if job.FirstSeq == 0 {
		job.FirstSeq = seq
	}
	job.LastSeq, job.Updated = seq, time.Now().UTC()
	putCopy(&out.Changes, job)
	return nil
}

// copyExtracted marks the grant's copy sent once the source has nothing
// more of it: idle, or no longer copying.
func (a *Agent) copyExtracted(ctx context.Context, src connectors.Source, g api.GrantInfo, idle bool) error {
	a.copyMu.Lock()
	defer a.copyMu.Unlock()
	scope := "src/" + g.ID
	v := a.state.view(scope)
	job, err := loadCopy(v, keyCopy)
	if err != nil || job == nil || !job.Active() {
		return err
	}
	if !idle {
		c, ok := src.(connectors.Copier)
		if !ok {
			return nil
		}
		if copying, err := c.Copying(v); err != nil || copying {
			return err
		}
	}
	job.State, job.Reason, job.Updated = api.CopySent, "", time.Now().UTC()
	var ch connectors.Changes
	putCopy(&ch, job)
	a.log.Info("copy extracted; waiting for the consumer to apply it", "grant", g.ID, "copy", job.ID, "rows", job.Rows, "files", job.Files, "batches", job.Batches)
	return a.state.commitChanges(ctx, scope, &ch)
}

// copyLoop finishes copies whose last batch the consumer has applied,
// stops those whose grant ended, and reports progress to the hub.
func (a *Agent) copyLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	reported := map[string]time.Time{} // copy ID → Updated last reported
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if vs, err := a.state.withKey(keyVerify); err == nil {
			for scope, raw := range vs {
				if err := a.verifyCheck(ctx, scope, raw); err != nil && ctx.Err() == nil {
					a.log.Warn("verify: cannot read the consumer's answer yet", "scope", scope, "err", err)
				}
			}
		}
		jobs, err := a.state.withKey(keyCopy)
		if err != nil {
			a.log.Error("read copy state", "err", err)
			continue
		}
		for scope := range jobs {
			job, err := a.copyCheck(ctx, scope)
			if err != nil {
				if ctx.Err() == nil {
					a.log.Warn("copy: cannot check the consumer's receipt yet", "scope", scope, "err", err)
				}
				continue
			}
			if job == nil || reported[job.ID].Equal(job.Updated) {
				continue
			}
			if err := a.call(ctx, http.MethodPost, "/v1/copies", job, nil); err == nil {
				reported[job.ID] = job.Updated
			}
		}
	}
}

// copyCheck moves one grant's copy on from sent to done (or to stopped)
// and returns it.
func (a *Agent) copyCheck(ctx context.Context, scope string) (*api.Copy, error) {
	a.copyMu.Lock()
	defer a.copyMu.Unlock()
	job, err := loadCopy(a.state.view(scope), keyCopy)
	if err != nil || job == nil {
		return job, err
	}
	g, active := a.grantActive(job.Grant)
	var ch connectors.Changes
	switch {
	case job.State == api.CopyDone || job.State == api.CopyStopped:
		return job, nil
	case !active:
		job.State, job.Reason = api.CopyStopped, "the grant ended"
	case job.State != api.CopySent:
		return job, nil
	case job.LastSeq > 0:
		rc, err := a.receiptFor(ctx, g, job.LastSeq)
		if err != nil || rc == nil {
			return job, err
		}
	}
	now := time.Now().UTC()
	if job.State == api.CopySent {
		job.State = api.CopyDone
		a.log.Info("copy done: the consumer applied its last batch", "grant", job.Grant, "copy", job.ID, "rows", job.Rows, "files", job.Files, "seconds", now.Sub(job.Started).Seconds())
	}
	job.Updated, job.Finished = now, now
	putCopy(&ch, job)
	return job, a.state.commitChanges(ctx, scope, &ch)
}

// receiptFor fetches and checks the consumer's signed receipt for one
// batch of a grant this node provides; nil when it has not come in yet.
func (a *Agent) receiptFor(ctx context.Context, g api.GrantInfo, seq uint64) (*receipt.Receipt, error) {
	var recs []api.ReceiptRecord
	q := url.Values{"grant": {g.ID}, "seq": {strconv.FormatUint(seq, 10)}}
	if err := a.call(ctx, http.MethodGet, "/v1/receipts?"+q.Encode(), nil, &recs); err != nil {
		return nil, err
	}
	if len(recs) == 0 || len(recs[0].Receipt) == 0 || recs[0].Sequence != seq {
		return nil, nil
	}
	rc, err := checkReceipt(recs[0], g, a.id.NodeID, func(keyID string) (seal.PublicKey, error) { return a.sealKey(ctx, g.Consumer, keyID) })
	if err != nil {
		return nil, errors.Join(errors.New("receipt refused"), err)
	}
	return rc, nil
}

// filesDone counts the files a batch completes.
func filesDone(fs []batch.FileEntry) int64 {
	var n int64
	for _, f := range fs {
		if f.Op == "put" && f.Chunk == f.Chunks-1 {
			n++
		}
	}
	return n
}

// publishedEntry finds a resource this agent publishes.
func publishedEntry(cfg Config, resource, what string) (*Entry, error) {
	for i := range cfg.Resources {
		if cfg.Resources[i].ID == resource {
			return &cfg.Resources[i], nil
		}
	}
	return nil, fmt.Errorf("resource %s is not published by this agent (no such entry under resources in its config): %s runs on the provider's agent", resource, what)
}

// providedTo finds the batch grant under which this agent provides a
// resource to node, and opens the agent's state to ask the running agent
// for something under it (the caller closes it).
func providedTo(ctx context.Context, cfg Config, resource, node, what string) (*api.GrantInfo, *State, error) {
	if _, err := publishedEntry(cfg, resource, what); err != nil {
		return nil, nil, err
	}
	g, err := batchGrant(ctx, cfg, resource, node)
	if err != nil {
		return nil, nil, err
	}
	st, err := OpenState(cfg.dbPath())
	return g, st, err
}

// batchGrant asks the hub for the active batch grant of a resource this
// node provides to node, explaining why there is none.
func batchGrant(ctx context.Context, cfg Config, resource, node string) (*api.GrantInfo, error) {
	hub, id, err := hubClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	var gs []api.GrantInfo
	if err := call(ctx, hub, http.MethodGet, "/v1/grants", nil, &gs); err != nil {
		return nil, fmt.Errorf("ask the hub for grants: %w", err)
	}
	var other []string
	for i, g := range gs {
		if g.Resource != resource || g.Provider != id.NodeID || g.Consumer != node || !g.Active {
			continue
		}
		if g.Mode == api.ModeBatch {
			return &gs[i], nil
		}
		other = append(other, g.ID+" ("+g.Mode+")")
	}
	if len(other) > 0 {
		return nil, fmt.Errorf("node %s holds grant %s for %s, which answers calls and carries no batches: this needs a batch grant (it applies with --mode batch)", node, strings.Join(other, ", "), resource)
	}
	if _, err := fetchSealKey(ctx, hub, node, ""); errors.Is(err, batch.ErrUnknownKey) {
		return nil, fmt.Errorf("node %s is not enrolled at the hub: check the ID (the consumer's qz-agent status shows it; qz-central node list lists them)", node)
	}
	return nil, fmt.Errorf("node %s has no active grant for %s: it applies with 'qz-agent apply %s --mode batch …' and the grant must be approved first", node, resource, resource)
}

// StartCopy asks the agent for a full copy of a resource it publishes to
// a consumer holding a batch grant for it, and returns the request. The
// running agent starts it within a poll.
func StartCopy(ctx context.Context, cfg Config, resource, node string) (*api.Copy, error) {
	g, st, err := providedTo(ctx, cfg, resource, node, "a copy")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if cur, err := loadCopy(st.view("src/"+g.ID), keyCopy); err != nil {
		return nil, err
	} else if cur != nil && cur.Active() {
		return nil, fmt.Errorf("copy %s of %s to %s is under way (%s): follow it with 'qz-agent copy status'", cur.ID, resource, node, cur.State)
	}
	req := &api.Copy{ID: newCopyID(), Grant: g.ID, Resource: resource, Provider: g.Provider, Consumer: node, State: api.CopyRequested, Updated: time.Now().UTC()}
	raw, _ := json.Marshal(req)
	var ch connectors.Changes
	ch.Put(keyCopyReq, raw)
	if err := st.commitChanges(ctx, "src/"+g.ID, &ch); err != nil {
		return nil, err
	}
	return req, nil
}

// Copies lists this agent's copies: each grant's current or last one, and
// those asked for and not started yet.
func Copies(cfg Config) ([]api.Copy, error) {
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return st.copies()
}

func (s *State) copies() ([]api.Copy, error) {
	var out []api.Copy
	for _, key := range []string{keyCopy, keyCopyReq} {
		m, err := s.withKey(key)
		if err != nil {
			return nil, err
		}
		for scope, raw := range m {
			var c api.Copy
			if err := json.Unmarshal(raw, &c); err != nil {
				return nil, fmt.Errorf("copy state of %s: %w", scope, err)
			}
			out = append(out, c)
		}
	}
	return out, nil
}
