package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"github.com/qianzhi/qianzhi/pkg/mask"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/pkg/throttle"
	"github.com/qianzhi/qianzhi/transport"
)

// batchOverhead bounds the header and trailer of a batch for quota
// reservations; the exact size is settled after writing.
const batchOverhead = 64 << 10

// produceLoop extracts batches of one resource for each of its grants.
func (a *Agent) produceLoop(ctx context.Context, resource string, src connectors.Source) {
	log := a.log.With("resource", resource)
	retry := time.NewTicker(a.cfg.Poll)
	defer retry.Stop()
	failing := map[string]int{} // grant → failed attempts in a row
	for {
		grants, gen := a.providerGrants(resource)
		for _, g := range grants {
			err := a.produceGrant(ctx, src, resource, g)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				// Shown in qz-agent status until it passes; logged on the
				// first failure and then now and then, not every poll.
				if failing[g.ID]%60 == 0 {
					a.fail(errSource)
					log.Error("extraction failed; will retry", "grant", g.ID, "err", err)
					a.state.setStopped(g.ID, "extract", err.Error())
				}
				failing[g.ID]++
			case failing[g.ID] > 0:
				delete(failing, g.ID)
				a.state.clearStopped(g.ID, "extract")
				log.Info("extraction resumed", "grant", g.ID)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-src.Changed():
		case <-gen:
		case <-retry.C:
		}
	}
}

// produceGrant seals batches for one grant until the source is idle. It
// is a two-stage pipeline: while one batch is compressed, hashed, written
// and committed, the source reads the next, seeing the state the first
// will commit (an overlay of its pending changes). Batches commit in
// order; if one fails, the batch read after it is dropped and read again.
func (a *Agent) produceGrant(ctx context.Context, src connectors.Source, resource string, g api.GrantInfo) error {
	scope := "src/" + g.ID
	var inflight chan error // the seal in progress, if any
	var pending *overlay    // the state once it commits
	drain := func() error {
		if inflight == nil {
			return nil
		}
		err := <-inflight
		inflight, pending = nil, nil
		return err
	}
	defer drain()
	for {
		if _, ok := a.grantActive(g.ID); !ok {
			return drain()
		}
		if inflight != nil && a.copyAttention(resource, g) {
			// Copy bookkeeping reads and writes committed state.
			if err := drain(); err != nil {
				return err
			}
		}
		if inflight == nil {
			if wait, err := a.copyBefore(ctx, src, resource, g); err != nil || wait {
				return err
			}
		}
		proj, err := a.projection(g)
		if err != nil {
			return errors.Join(err, drain())
		}
		var view connectors.State = a.state.view(scope)
		if pending != nil {
			view = *pending
		}
		out := connectors.Output{Limit: int64(a.cfg.Batch.MaxBytes), Project: proj}
		err = src.Next(ctx, view, &out)
		if errors.Is(err, connectors.ErrIdle) {
			if err := drain(); err != nil {
				return err
			}
			return a.copyExtracted(ctx, src, g, true)
		}
		if err != nil {
			return errors.Join(err, drain())
		}
		if out.Empty() {
			if err := drain(); err != nil {
				return err
			}
			if err := a.state.commitChanges(ctx, scope, &out.Changes); err != nil {
				return err
			}
			if err := a.copyExtracted(ctx, src, g, false); err != nil {
				return err
			}
			continue
		}
		res, ag := a.limitsOf(resource)
		if err := throttle.WaitAll(ctx, out.Rows, res.rows, ag.rows); err != nil {
			return errors.Join(err, drain())
		}
		reserved := int64(len(out.Body)) + batchOverhead
		if err := a.reserveSpool(ctx, reserved); err != nil {
			return errors.Join(err, drain())
		}
		if err := drain(); err != nil {
			a.spool.release(reserved)
			return err // this batch was read after one that failed: read it again
		}
		done := make(chan error, 1)
		// The source's changes as they stand: sealing adds the agent's own
		// (the copy's progress) to out.Changes meanwhile.
		ov := newOverlay(a.state.view(scope), &out.Changes)
		inflight, pending = done, &ov
		go func() {
			size, err := a.seal(ctx, resource, g, &out)
			if err != nil {
				a.spool.release(reserved)
				done <- err
				return
			}
			a.spool.release(reserved - size)
			select {
			case a.uploadKick <- struct{}{}:
			default:
			}
			done <- a.copyExtracted(ctx, src, g, false)
		}()
	}
}

// overlay is a grant's committed state with the changes of the batch being
// sealed laid over it: what the state will be once that batch commits.
type overlay struct {
	base    connectors.State
	pending map[string][]byte // the last change of each key; nil deletes
}

func newOverlay(base connectors.State, ch *connectors.Changes) overlay {
	m := map[string][]byte{}
	ch.Each(func(k string, v []byte) error {
		m[k] = v
		return nil
	})
	return overlay{base: base, pending: m}
}

func (o overlay) Scope() string { return o.base.Scope() }

func (o overlay) Get(key string) ([]byte, bool, error) {
	if v, ok := o.pending[key]; ok {
		return v, v != nil, nil
	}
	return o.base.Get(key)
}

func (o overlay) Scan(prefix string, fn func(string, []byte) error) error {
	m := map[string][]byte{}
	if err := o.base.Scan(prefix, func(k string, v []byte) error {
		m[k] = v
		return nil
	}); err != nil {
		return err
	}
	for k, v := range o.pending {
		if strings.HasPrefix(k, prefix) {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if err := fn(k, m[k]); err != nil {
			return err
		}
	}
	return nil
}

// projection is what a grant lets through, with its masking rules and
// hashing secret.
func (a *Agent) projection(g api.GrantInfo) (*connectors.Projection, error) {
	p := &connectors.Projection{Fields: g.Fields, Masks: map[string]mask.Rule{}, Secret: mask.Secret(a.maskKey, g.ID)}
	for f, text := range g.Masks {
		r, err := mask.Parse(text)
		if err != nil {
			return nil, fmt.Errorf("grant %s, field %s: %w", g.ID, f, err)
		}
		p.Masks[f] = r
	}
	return p, nil
}

// seal writes one batch to the spool durably, then commits it with the
// source's checkpoint.
func (a *Agent) seal(ctx context.Context, resource string, g api.GrantInfo, out *connectors.Output) (int64, error) {
	seq, err := a.state.nextSeq(g.ID)
	if err != nil {
		return 0, err
	}
	level := compressionLevels[a.cfg.Batch.Compression]
	h := batch.Header{
		Version: batch.FormatVersion, Kind: out.Kind, Resource: resource, Grant: g.ID,
		Provider: a.id.NodeID, Consumer: g.Consumer, Sequence: seq, Created: time.Now().UTC(),
		Compression: "zstd", Level: level, BodyLen: int64(len(out.Body)), Files: out.Files,
		Schema: out.Schema, Rows: out.Rows,
	}
	if level == 0 {
		h.Compression, h.Level = "none", 0
	}
	name := batchName(g.ID, seq)
	size, err := batch.Create(a.spoolPath(name), h, bytes.NewReader(out.Body), a.id.Seal)
	if err != nil {
		os.Remove(a.spoolPath(name))
		return 0, fmt.Errorf("seal batch %s: %w", name, err)
	}
	if len(out.Files) == 1 && out.Files[0].Op == batch.OpVerify {
		if err := verifySealed(a.state.view("src/"+g.ID), seq, out); err != nil {
			os.Remove(a.spoolPath(name))
			return 0, err
		}
	} else if out.Schema != nil && out.Schema.Phase == batch.PhaseDigest {
		if out.Schema.Reconcile.Verify {
			if err := verifySealed(a.state.view("src/"+g.ID), seq, out); err != nil {
				os.Remove(a.spoolPath(name))
				return 0, err
			}
		} else {
			// Wait for this digest's receipt, which names the buckets to resend.
			out.Changes.Put(sqltable.KeyReconcileWait, []byte(strconv.FormatUint(seq, 10)))
		}
	}
	e := spoolEntry{Grant: g.ID, Seq: seq, Resource: resource, File: name, Size: size}
	a.copyMu.Lock()
	defer a.copyMu.Unlock()
	if err := a.copySealed(g, seq, size, out); err != nil {
		os.Remove(a.spoolPath(name))
		return 0, err
	}
	a.markFresh(name) // before the commit, so the uploader cannot see it first
	if err := a.state.commitSealed(ctx, e, &out.Changes); err != nil {
		a.takeFresh(name)
		os.Remove(a.spoolPath(name))
		return 0, fmt.Errorf("record batch %s: %w", name, err)
	}
	a.metrics.sealed(resource, out.Rows, size)
	a.log.Debug("batch sealed", "grant", g.ID, "seq", seq, "bytes", size, "files", len(out.Files), "rows", out.Rows)
	return size, nil
}

// uploadLoop sends spooled batches to the hub, each grant's in sequence
// order. A batch that fails holds back only the rest of its own grant.
func (a *Agent) uploadLoop(ctx context.Context) {
	attempt := 0
	for {
		es, err := a.state.spooled()
		if err != nil {
			a.log.Error("read spool index", "err", err)
		}
		failed := map[string]bool{}
		progressed := false
		for _, e := range es {
			if ctx.Err() != nil {
				return
			}
			if failed[e.Grant] {
				continue
			}
			if err := a.upload(ctx, e); err != nil {
				if ctx.Err() != nil {
					return
				}
				failed[e.Grant] = true
				if errors.Is(err, transport.ErrUnreachable) {
					break // no point trying the other grants now
				}
				attempt++
				if attempt == 1 || attempt%20 == 0 {
					a.fail(errUpload)
					a.log.Warn("upload failed; will resume", "grant", e.Grant, "seq", e.Seq, "err", err)
				}
				continue
			}
			progressed = true
		}
		if progressed {
			attempt = 0
			continue
		}
		if len(failed) > 0 {
			attempt++
			if !backoff(ctx, attempt) {
				return
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-a.uploadKick:
		case <-time.After(a.cfg.Poll):
		}
	}
}

// errStopped means a batch cannot be uploaded and was set aside.
var errStopped = errors.New("batch set aside")

// upload sends one batch, resuming from the bytes the hub already holds.
func (a *Agent) upload(ctx context.Context, e spoolEntry) error {
	path := a.spoolPath(e.File)
	url := a.hub.URL("/v1/batches/" + e.Grant + "/" + strconv.FormatUint(e.Seq, 10))
	var off int64
	if !a.takeFresh(e.File) {
		// A batch this process did not seal (or tried before) may be partly
		// at the hub already: ask how much, and send only the rest.
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
		if err != nil {
			return err
		}
		resp, err := a.hub.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusGone:
			// The grant ended: nothing under it may be delivered any more.
			a.log.Warn("grant no longer active; dropping its spooled batch", "grant", e.Grant, "seq", e.Seq, "status", resp.StatusCode)
			return a.finish(ctx, e, "")
		case resp.StatusCode != http.StatusOK:
			return fmt.Errorf("upload status: %s", resp.Status)
		case resp.Header.Get(api.HeaderComplete) == "1":
			return a.keep(ctx, e)
		}
		off, err = strconv.ParseInt(resp.Header.Get(api.HeaderOffset), 10, 64)
		if err != nil || off < 0 || off > e.Size {
			off = 0
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open spooled batch: %w", err)
	}
	defer f.Close()
	// Count before sending, so a crash mid-request still counts its bytes.
	if err := a.state.Add(CounterUploadAttempted, e.Size-off); err != nil {
		return err
	}
	res, ag := a.limitsOf(e.Resource)
	body := throttle.Reader(ctx, io.NewSectionReader(f, off, e.Size-off), res.bytes, ag.bytes)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, body)
	if err != nil {
		return err
	}
	req.ContentLength = e.Size - off
	req.Header.Set(api.HeaderOffset, strconv.FormatInt(off, 10))
	req.Header.Set(api.HeaderTotal, strconv.FormatInt(e.Size, 10))
	resp, err := a.hub.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated:
		return a.keep(ctx, e)
	case http.StatusAccepted, http.StatusConflict:
		return fmt.Errorf("upload incomplete (%s); resuming", resp.Status)
	case http.StatusGone:
		return a.finish(ctx, e, "")
	case http.StatusUnprocessableEntity:
		return a.rejected(ctx, e, apiError(resp))
	}
	return fmt.Errorf("upload: %s", apiError(resp))
}

// rejected handles the hub's refusal of a batch. If our copy verifies, the
// hub's copy was damaged in transit: start over from byte zero. If it does
// not, the spooled file itself is damaged: quarantine it and record it; the
// heal loop makes up for it under the same sequence number (reproduce).
func (a *Agent) rejected(ctx context.Context, e spoolEntry, reason string) error {
	path := a.spoolPath(e.File)
	_, verr := batch.VerifyFile(path, func(string) (seal.PublicKey, error) { return a.id.Seal.Public(), nil })
	a.fail(errReject)
	a.state.reject(e.Grant, e.Seq, "hub", reason)
	if verr == nil {
		a.log.Warn("hub rejected a batch that verifies here; sending it again", "grant", e.Grant, "seq", e.Seq, "reason", reason)
		return fmt.Errorf("hub rejected batch %s/%d: %s", e.Grant, e.Seq, reason)
	}
	if err := a.quarantineFile(e); err != nil {
		return err
	}
	// The heal loop makes up for it (reproduce) within a poll.
	a.fail(errSpool)
	a.log.Error("spooled batch is damaged; quarantined it, and it is made up for", "grant", e.Grant, "seq", e.Seq, "err", verr, "quarantine", a.spoolPath("quarantine"))
	return fmt.Errorf("%w: batch %s/%d damaged in the spool: %v", errStopped, e.Grant, e.Seq, verr)
}

// quarantineFile takes a damaged batch out of the upload order and moves
// its file to the quarantine folder, outside the quota. The row is marked
// first: a crash before the move leaves a quarantined row whose file is
// still in place, which the next start uploads again (and the hub refuses
// again), never a file removed while a row names it.
func (a *Agent) quarantineFile(e spoolEntry) error {
	if err := a.state.setAside(e.ID); err != nil {
		return err
	}
	q := a.spoolPath("quarantine")
	os.MkdirAll(q, 0o750)
	os.Rename(a.spoolPath(e.File), q+"/"+e.File)
	a.spool.release(e.Size)
	return nil
}

// finish removes a batch that is no longer needed (receipted, or of a
// grant that ended) if it is still in the state e names: index first, then
// file, so a crash between leaves only an orphan file that start-up
// removes. counter, if not empty, counts it.
func (a *Agent) finish(ctx context.Context, e spoolEntry, counter string) error {
	ok, err := a.state.unspool(ctx, e, counter)
	if err != nil || !ok {
		return err
	}
	os.Remove(a.spoolPath(e.File))
	fsutil.SyncDir(a.cfg.spoolDir())
	a.spool.release(e.Size)
	return nil
}

// markFresh notes a batch sealed by this process: nothing of it can be at
// the hub yet, so its first upload skips the status round trip.
func (a *Agent) markFresh(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fresh[name] = true
}

// takeFresh reports (once) whether a batch is fresh.
func (a *Agent) takeFresh(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok := a.fresh[name]
	delete(a.fresh, name)
	return ok
}
