package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/file"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// readErrs remembers whether a copy failed reading (the network) rather
// than writing (the local disk).
type readErrs struct {
	r   io.Reader
	err error
}

func (r *readErrs) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// errTransient marks failures of the link or the hub, which a retry
// resolves, as opposed to problems of the line itself.
var errTransient = errors.New("hub connection lost")

// consumeLoop fetches, verifies and applies deliveries, in sequence order
// per grant, and answers each with a signed receipt.
func (a *Agent) consumeLoop(ctx context.Context) {
	attempt := 0
	stopped := map[string]time.Time{} // grants whose line is stopped, until when
	rejects := map[string]int{}       // grants → deliveries rejected in a row
	for {
		var ds []api.Delivery
		err := a.call(ctx, http.MethodGet, "/v1/deliveries?wait=25s", nil, &ds)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			attempt++
			if attempt == 1 || attempt%20 == 0 {
				a.fail(errHub)
				a.log.Warn("cannot fetch deliveries; retrying", "err", err)
			}
			if !backoff(ctx, attempt) {
				return
			}
			continue
		}
		attempt = 0
		blocked := false
		var next <-chan struct{} // the prefetch of ds[i], started while ds[i-1] applied
		for i, d := range ds {
			if next != nil {
				<-next
				next = nil
			}
			if until, ok := stopped[d.Grant]; ok && time.Now().Before(until) {
				blocked = true
				continue
			}
			if i+1 < len(ds) && !time.Now().Before(stopped[ds[i+1].Grant]) {
				// A stopped line's batch waits at the hub, not in the inbox.
				next = a.prefetch(ctx, ds[i+1])
			}
			if err := a.deliver(ctx, d); err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, errTransient) {
					// The hub or the link went away: not this line's fault.
					// Resume shortly, from the bytes already fetched.
					a.fail(errApply)
					a.log.Warn("delivery interrupted; resuming", "grant", d.Grant, "seq", d.Sequence, "err", err)
					stopped[d.Grant] = time.Now().Add(time.Second)
					blocked = true
					if errors.Is(err, transport.ErrUnreachable) {
						break
					}
					continue
				}
				blocked = true
				var rj *rejectedDelivery
				if errors.As(err, &rj) {
					rejects[d.Grant]++
					wait := rejectWait(rejects[d.Grant], rj.action)
					if errors.Is(rj.err, batch.ErrLimit) {
						wait = limitPause
					}
					why := fmt.Sprintf("batch %d failed its check here (%v); fetching it again in %s", d.Sequence, rj.err, wait)
					if rj.action == api.RejectResend {
						why = fmt.Sprintf("batch %d was damaged at the hub (%v); its provider was asked to send it again", d.Sequence, rj.err)
					}
					a.log.Warn("delivered batch rejected; this grant's line waits for a good copy", "grant", d.Grant, "seq", d.Sequence, "hub", rj.action, "retry_in", wait, "err", rj.err)
					a.state.setStopped(d.Grant, "consumer", why)
					stopped[d.Grant] = time.Now().Add(wait)
					continue
				}
				a.fail(errApply)
				a.log.Error("delivery not applied; this grant's line waits", "grant", d.Grant, "seq", d.Sequence, "err", err)
				a.state.setStopped(d.Grant, "consumer", fmt.Sprintf("batch %d: %v", d.Sequence, err))
				stopped[d.Grant] = time.Now().Add(5 * time.Second)
				if errors.Is(err, batch.ErrLimit) {
					stopped[d.Grant] = time.Now().Add(limitPause)
				}
			} else if _, was := stopped[d.Grant]; was {
				delete(stopped, d.Grant)
				delete(rejects, d.Grant)
				a.state.clearStopped(d.Grant, "consumer")
			}
		}
		if next != nil {
			<-next
		}
		if blocked || len(ds) == 0 {
			// Nothing we can act on now: do not spin on the same list.
			if !backoff(ctx, 1) {
				return
			}
		}
	}
}

// deliver handles one delivery: receipt again if already applied, apply
// if next in line, wait if a predecessor is missing.
func (a *Agent) deliver(ctx context.Context, d api.Delivery) error {
	applied, err := a.state.applied(d.Grant)
	if err != nil {
		return err
	}
	switch {
	case d.Sequence <= applied:
		// Applied before a crash that came before the receipt (and maybe
		// before the inbox file was removed).
		os.Remove(filepath.Join(a.cfg.inboxDir(), batchName(d.Grant, d.Sequence)+".part"))
		return a.sendReceipt(ctx, d.Grant, d.Sequence)
	case d.Sequence > applied+1:
		return fmt.Errorf("gap: batch %d arrived but %d is the next to apply", d.Sequence, applied+1)
	}
	path := filepath.Join(a.cfg.inboxDir(), batchName(d.Grant, d.Sequence)+".part")
	t0 := time.Now()
	if err := a.download(ctx, d, path); err != nil {
		return err
	}
	t1 := time.Now()
	keys := func(keyID string) (seal.PublicKey, error) { return a.sealKey(ctx, d.Provider, keyID) }
	// The seal says who sent the batch, not that it is harmless: its
	// declared sizes are held to this agent's limits before anything is
	// parsed beyond the framing, decompressed or allocated for it.
	info, err := batch.DefaultLimits.VerifyFile(path, keys)
	if err == nil {
		err = checkDelivery(info, d, a.id.NodeID)
	}
	if errors.Is(err, batch.ErrRejected) && !errors.Is(err, batch.ErrLimit) {
		// The inbox copy is not fsynced: after a machine crash it may hold
		// stale blocks. Fetch it once more before calling it forged.
		os.Remove(path)
		if err = a.download(ctx, d, path); err != nil {
			return err
		}
		info, err = batch.DefaultLimits.VerifyFile(path, keys)
		if err == nil {
			err = checkDelivery(info, d, a.id.NodeID)
		}
	}
	if err != nil {
		if errors.Is(err, batch.ErrRejected) {
			return a.rejectDelivery(ctx, d, path, err)
		}
		return err
	}
	t2 := time.Now()
	if err := a.apply(ctx, d, path, info); err != nil {
		if errors.Is(err, batch.ErrLimit) {
			// A row larger than this agent accepts, found while reading.
			return a.rejectDelivery(ctx, d, path, err)
		}
		return err
	}
	t3 := time.Now()
	os.Remove(path)
	err = a.sendReceipt(ctx, d.Grant, d.Sequence)
	a.log.Debug("delivery timing", "seq", d.Sequence, "download", t1.Sub(t0), "verify", t2.Sub(t1), "apply", t3.Sub(t2), "receipt", time.Since(t3))
	return err
}

// rejectDelivery records a delivered batch this agent refuses and reports
// it to the hub, which checks its own copy and says what happens next.
func (a *Agent) rejectDelivery(ctx context.Context, d api.Delivery, path string, err error) error {
	os.Remove(path)
	a.fail(errReject)
	a.state.reject(d.Grant, d.Sequence, "consumer", err.Error())
	var ans api.RejectionAnswer
	if herr := a.call(ctx, http.MethodPost, "/v1/rejections", api.Rejection{Grant: d.Grant, Sequence: d.Sequence, Reason: err.Error()}, &ans); herr != nil {
		a.log.Warn("cannot report a rejected batch to the hub", "grant", d.Grant, "seq", d.Sequence, "err", herr)
	}
	return &rejectedDelivery{action: ans.Action, err: err}
}

// limitPause is how long a line waits after a batch broke a receiver limit
// before it tries that batch again: the same sealed batch breaks it again,
// so trying often would only download it and write audit records.
const limitPause = time.Hour

// rejectedDelivery is a delivered batch that failed its checks here, with
// what the hub found when it checked its own copy (api.RejectRefetch,
// api.RejectResend, or "" when the hub could not be told).
type rejectedDelivery struct {
	action string
	err    error
}

func (e *rejectedDelivery) Error() string { return "rejected delivered batch: " + e.err.Error() }
func (e *rejectedDelivery) Unwrap() error { return e.err }

// rejectWait is how long a grant's line waits after its n-th rejection in
// a row before it tries again: a batch the hub is getting again comes back
// as a new delivery; one damaged on this side is fetched again, less and
// less often, up to every 5 minutes.
func rejectWait(n int, action string) time.Duration {
	if action == api.RejectResend {
		return time.Second
	}
	return min(2*time.Second<<min(n-1, 10), 5*time.Minute)
}

// prefetch downloads a delivery into the inbox in the background, so that
// the network works while the batch before it is applied; deliver then
// finds it there (a download resumes from the bytes already fetched). The
// channel closes when it is done; a failure is left for deliver to meet.
func (a *Agent) prefetch(ctx context.Context, d api.Delivery) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if applied, err := a.state.applied(d.Grant); err != nil || d.Sequence <= applied {
			return
		}
		a.download(ctx, d, filepath.Join(a.cfg.inboxDir(), batchName(d.Grant, d.Sequence)+".part"))
	}()
	return done
}

// checkDelivery makes sure the sealed header says what the hub said.
func checkDelivery(info *batch.Info, d api.Delivery, me string) error {
	h := info.Header
	if h.Grant != d.Grant || h.Sequence != d.Sequence || h.Provider != d.Provider || h.Consumer != me || h.Resource != d.Resource {
		return batch.Reject(errors.New("header does not match the delivery"),
			fmt.Sprintf("header names %s/%d %s→%s", h.Grant, h.Sequence, h.Provider, h.Consumer))
	}
	return nil
}

// download fetches a batch into path, resuming from the bytes already there.
func (a *Agent) download(ctx context.Context, d api.Delivery, path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if off > d.Size {
		f.Truncate(0)
		off, _ = f.Seek(0, io.SeekStart)
	}
	if off == d.Size {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.hub.URL("/v1/batches/"+d.Grant+"/"+strconv.FormatUint(d.Sequence, 10)), nil)
	if err != nil {
		return err
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	}
	if err := a.state.Add(CounterDownloadAttempted, d.Size-off); err != nil {
		return err
	}
	resp, err := a.hub.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errTransient, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK && off > 0:
		f.Truncate(0)
		f.Seek(0, io.SeekStart)
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusPartialContent:
	default:
		return fmt.Errorf("download: %s", apiError(resp))
	}
	// No fsync: the inbox is a cache of what the hub holds. After a crash a
	// damaged file fails verification and is fetched again; the durable step
	// is the apply, which the sink fsyncs before the commit.
	body := &readErrs{r: resp.Body}
	if _, err := io.Copy(f, body); err != nil {
		if body.err != nil {
			return fmt.Errorf("%w: download interrupted: %w", errTransient, err)
		}
		return fmt.Errorf("write inbox file (is the disk full?): %w", err)
	}
	return nil
}

// sealKey returns a node's seal key by key ID, as pinned in this node's
// state (see peers.go): the hub is asked once per key, and only a key it
// can show was registered by an audited enrolment replaces a pinned one.
func (a *Agent) sealKey(ctx context.Context, node, keyID string) (seal.PublicKey, error) {
	k := node + "/" + keyID
	a.mu.Lock()
	pub, ok := a.sealKeys[k]
	a.mu.Unlock()
	if ok {
		return pub, nil
	}
	pub, err := pinnedKey(ctx, a.state, a.hub, a.log, node, keyID)
	if err != nil {
		return pub, err
	}
	a.mu.Lock()
	a.sealKeys[k] = pub
	a.mu.Unlock()
	return pub, nil
}

// sink returns the sink for a resource: its subscription, or a folder under
// the state dir for file batches of an unsubscribed resource.
func (a *Agent) sink(resource, kind string) (connectors.Sink, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.sinks[resource]; ok {
		return s, nil
	}
	if err := api.ValidID("resource", resource); err != nil {
		return nil, err // it names a folder below; never let it escape
	}
	var s connectors.Sink
	var err error
	for _, e := range a.config().Subscriptions {
		if e.ID == resource {
			s, err = e.Sink.OpenSink(a.log.With("resource", resource))
		}
	}
	if s == nil && err == nil {
		if kind != "files" {
			return nil, fmt.Errorf("no subscription for %s: add one to the config", resource)
		}
		s, err = file.NewSink(filepath.Join(a.cfg.StateDir, "received", resource), a.log.With("resource", resource))
	}
	if err != nil {
		return nil, fmt.Errorf("subscription %s: %w", resource, err)
	}
	a.sinks[resource] = s
	return s, nil
}

// apply applies a verified batch and records it, with its receipt, in one
// transaction.
func (a *Agent) apply(ctx context.Context, d api.Delivery, path string, info *batch.Info) error {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	if _, destroyed, err := a.state.view("sink/" + d.Grant).Get(keyDestroyed); err != nil {
		return err
	} else if destroyed {
		return fmt.Errorf("grant %s ended and what it delivered was destroyed", d.Grant)
	}
	if emptyBatch(&info.Header) {
		// It takes the place of a batch its provider could not send (a full
		// copy follows it): nothing to apply, only its number to record.
		return a.commitApplied(ctx, d, info, &connectors.Changes{})
	}
	s, err := a.sink(d.Resource, info.Header.Kind)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	body, err := info.Body(f)
	if err != nil {
		return err
	}
	defer body.Close()
	var ch connectors.Changes
	ch.Put(keyKind, []byte(info.Header.Kind)) // what destruction must find, should the grant end so
	scope := "sink/" + d.Grant
	if err := s.Apply(ctx, &info.Header, body, a.state.view(scope), &ch); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	return a.commitApplied(ctx, d, info, &ch)
}

// emptyBatch reports whether a batch carries nothing at all: no files, no
// schema, no body.
func emptyBatch(h *batch.Header) bool {
	return h.Kind == batch.KindFiles && len(h.Files) == 0 && h.Schema == nil && h.BodyLen == 0
}

// commitApplied signs the receipt of an applied batch and records both,
// with the sink's state changes, in one transaction.
func (a *Agent) commitApplied(ctx context.Context, d api.Delivery, info *batch.Info, ch *connectors.Changes) error {
	rc, err := receipt.Sign(receipt.Receipt{
		Version: 1, Resource: d.Resource, Grant: d.Grant, Sequence: d.Sequence, Provider: d.Provider,
		Consumer: a.id.NodeID, BatchDigest: hex.EncodeToString(info.Digest), Applied: time.Now().UTC(),
		Mismatch: ch.Mismatch, MismatchFiles: ch.MismatchFiles,
	}, a.id.Seal)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(rc)
	if err != nil {
		return err
	}
	if err := a.state.commitApplied(ctx, d.Grant, d.Sequence, info.Size, ch, raw); err != nil {
		return err
	}
	a.metrics.applied(d.Resource, info.Header.Rows, info.Size, time.Since(info.Header.Created))
	a.log.Debug("batch applied", "grant", d.Grant, "seq", d.Sequence, "files", len(info.Header.Files))
	return nil
}

func (a *Agent) sendReceipt(ctx context.Context, grant string, seq uint64) error {
	raw, err := a.state.receipt(grant, seq)
	if err != nil {
		return fmt.Errorf("receipt %s/%d: %w", grant, seq, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.hub.URL("/v1/receipts"), bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.hub.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errTransient, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("hub refused receipt: %s", apiError(resp))
	}
	return nil
}
