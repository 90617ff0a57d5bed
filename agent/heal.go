package agent

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// A batch found damaged anywhere heals by itself (docs/protocol.md,
// "Damaged batches"). The provider keeps each batch after the hub stored
// it, within the spool quota, until the consumer's signed receipt for it
// (or a later one) is known; when the hub finds its stored copy damaged it
// asks for the batch again, and the provider sends its kept copy under the
// same sequence number.

// keyReceipted, in a grant's source state, is the highest sequence number
// whose receipt this provider checked: the consumer applies in order, so
// every batch up to it is applied and need not be kept.
const keyReceipted = "qz.receipted"

// reserveSpool takes n bytes of the spool quota, letting go of kept batches
// oldest first when that makes room, and otherwise waits (backpressure).
func (a *Agent) reserveSpool(ctx context.Context, n int64) error {
	waited := false
	for {
		c := a.spool.changed()
		if a.spool.tryReserve(n) {
			if waited {
				a.log.Info("spool has room again; extraction resumed")
			}
			return nil
		}
		dropped, err := a.dropOldestKept(ctx)
		if err != nil {
			return err
		}
		if dropped {
			continue
		}
		if !waited {
			used, quota := a.spool.usage()
			a.log.Warn("spool full; extraction paused until uploads free space", "used", used, "quota", quota)
			a.state.Add(CounterSpoolFullWaits, 1)
			waited = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c:
		}
	}
}

// dropOldestKept lets go of the oldest kept batch, if there is one. Should
// the hub find its copy of that batch damaged later, the batch is
// re-produced instead of re-sent.
func (a *Agent) dropOldestKept(ctx context.Context) (bool, error) {
	es, err := a.state.spoolRows(`WHERE state = ? ORDER BY id LIMIT 1`, spoolKept)
	if err != nil || len(es) == 0 {
		return false, err
	}
	a.log.Debug("kept batch let go to make room in the spool", "grant", es[0].Grant, "seq", es[0].Seq)
	return true, a.finish(ctx, es[0], CounterKeptDropped)
}

// keep records that the hub stored a batch; it stays in the spool, kept.
func (a *Agent) keep(ctx context.Context, e spoolEntry) error {
	if _, err := a.state.markKept(ctx, e); err != nil {
		return err
	}
	a.spool.wake() // a producer waiting for room may let it go now
	return nil
}

// healLoop asks the hub, every poll (at least a second apart), for the
// latest receipts of the grants this agent provides and for batches the
// hub wants again, lets go of kept batches the consumer applied, and sends
// or re-produces the wanted ones.
func (a *Agent) healLoop(ctx context.Context) {
	every := max(a.cfg.Poll, time.Second)
	fails := 0
	for {
		if !sleepCtx(ctx, every) {
			return
		}
		if err := a.healOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			if fails++; fails == 1 || fails%60 == 0 {
				a.log.Warn("cannot ask the hub for receipts and re-sends; retrying", "err", err)
			}
			continue
		}
		fails = 0
	}
}

// providedBatchGrants lists the batch grants this node provides, by ID,
// and whether each is active.
func (a *Agent) providedBatchGrants() map[string]api.GrantInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]api.GrantInfo{}
	now := time.Now()
	for _, g := range a.grants {
		if g.Provider == a.id.NodeID && g.Mode == api.ModeBatch {
			g.Active = g.Active && (g.Expires.IsZero() || now.Before(g.Expires))
			out[g.ID] = g
		}
	}
	return out
}

func (a *Agent) healOnce(ctx context.Context) error {
	grants := a.providedBatchGrants()
	kept, err := a.state.spoolRows(`WHERE state = ? ORDER BY id`, spoolKept)
	if err != nil {
		return err
	}
	for _, e := range kept {
		if g, ok := grants[e.Grant]; !ok || !g.Active {
			// Nothing under an ended grant is delivered any more.
			if err := a.finish(ctx, e, ""); err != nil {
				return err
			}
		}
	}
	damaged, err := a.state.spoolRows(`WHERE state = ? ORDER BY id`, spoolQuarantined)
	if err != nil {
		return err
	}
	for _, e := range damaged {
		if g, ok := grants[e.Grant]; ok && g.Active && e.Seq > a.receipted(g.ID) {
			if err := a.reproduce(ctx, g, e.Seq, "it was damaged or missing in the spool"); err != nil {
				return err
			}
		}
	}
	var poll api.ResendPoll
	for _, g := range grants {
		if g.Active {
			if err := a.healCopyDone(ctx, g); err != nil {
				return err
			}
			poll.Grants = append(poll.Grants, api.ResendGrant{Grant: g.ID, After: a.receipted(g.ID)})
		}
	}
	if len(poll.Grants) == 0 {
		return nil
	}
	var ans api.ResendAnswer
	if err := a.call(ctx, http.MethodPost, "/v1/resends", poll, &ans); err != nil {
		return err
	}
	for _, n := range ans.Grants {
		g, ok := grants[n.Grant]
		if !ok || !g.Active {
			continue // not asked about: the hub's word alone
		}
		if n.Receipt != nil {
			if err := a.receiptIn(ctx, g, *n.Receipt); err != nil {
				return err
			}
		}
		for _, seq := range n.Resend {
			if err := a.resend(ctx, g, seq); err != nil {
				return err
			}
		}
	}
	return nil
}

// receipted is the highest sequence number of a grant whose receipt this
// provider checked (0 if none).
func (a *Agent) receipted(grant string) uint64 {
	raw, ok, err := a.state.view("src/" + grant).Get(keyReceipted)
	if err != nil || !ok {
		return 0
	}
	n, _ := strconv.ParseUint(string(raw), 10, 64)
	return n
}

// receiptIn checks the consumer's signed receipt for a batch and lets go of
// the kept batches it covers: that one and every one before it.
func (a *Agent) receiptIn(ctx context.Context, g api.GrantInfo, rec api.ReceiptRecord) error {
	if rec.Sequence <= a.receipted(g.ID) {
		return nil
	}
	if _, err := checkReceipt(rec, g, a.id.NodeID, func(keyID string) (seal.PublicKey, error) { return a.sealKey(ctx, g.Consumer, keyID) }); err != nil {
		// The hub's word alone lets nothing go: the kept batches stay.
		a.log.Warn("receipt from the hub does not check; kept batches stay", "grant", g.ID, "seq", rec.Sequence, "err", err)
		return nil
	}
	var ch connectors.Changes
	ch.Put(keyReceipted, []byte(strconv.FormatUint(rec.Sequence, 10)))
	if err := a.state.commitChanges(ctx, "src/"+g.ID, &ch); err != nil {
		return err
	}
	kept, err := a.state.spoolRows(`WHERE state = ? AND grant_id = ? AND seq <= ? ORDER BY id`, spoolKept, g.ID, rec.Sequence)
	if err != nil {
		return err
	}
	for _, e := range kept {
		if err := a.finish(ctx, e, CounterKeptReleased); err != nil {
			return err
		}
	}
	return nil
}

// resend answers the hub's request for a batch again: the kept copy if it
// still checks, otherwise the batch is re-produced.
func (a *Agent) resend(ctx context.Context, g api.GrantInfo, seq uint64) error {
	if seq <= a.receipted(g.ID) {
		// The consumer's own receipt says it applied this batch.
		a.log.Warn("hub asks again for a batch its consumer receipted; ignored", "grant", g.ID, "seq", seq)
		return nil
	}
	e, err := a.state.spoolEntryOf(g.ID, seq)
	if errors.Is(err, sql.ErrNoRows) {
		next, err := a.state.nextSeq(g.ID)
		if err != nil {
			return err
		}
		if seq >= next {
			a.log.Warn("hub asks for a batch that was never sealed; ignored", "grant", g.ID, "seq", seq)
			return nil
		}
		return a.reproduce(ctx, g, seq, "it is no longer kept in the spool")
	}
	if err != nil {
		return err
	}
	switch e.State {
	case spoolWaiting:
		return nil // on its way already
	case spoolQuarantined:
		return a.reproduce(ctx, g, seq, "it was damaged in the spool")
	}
	if _, verr := batch.VerifyFile(a.spoolPath(e.File), func(string) (seal.PublicKey, error) { return a.id.Seal.Public(), nil }); verr != nil {
		if err := a.quarantineFile(e); err != nil {
			return err
		}
		return a.reproduce(ctx, g, seq, fmt.Sprintf("its kept copy is damaged too (%v)", verr))
	}
	if ok, err := a.state.setSpoolState(e.ID, spoolKept, spoolWaiting); err != nil || !ok {
		return err
	}
	a.state.Add(CounterResent, 1)
	a.log.Warn("the hub's copy of a batch was damaged; sending the kept copy again", "grant", g.ID, "seq", seq)
	select {
	case a.uploadKick <- struct{}{}:
	default:
	}
	return nil
}

// keyHealCopy, in a grant's source state, names the full copy started to
// make up for a batch that could not be re-sent; the provider's stopped
// note stays until that copy is done.
const keyHealCopy = "qz.heal_copy"

// reproduce makes up for batch seq of a grant, which can be neither
// uploaded nor re-sent: its spooled file is damaged or missing, or it was
// no longer kept when the hub found its copy damaged. The consumer applies
// in sequence order and a gap stops its line, so seq cannot be skipped; and
// the batches sealed after it are changes on top of what it carried, so it
// cannot be replaced by the start of something new either. Its sequence
// number goes out as an empty batch (sealed, carrying nothing), and a full
// copy of the resource is started after the last batch sealed, so that the
// consumer ends identical to the source whatever the lost batch held (see
// docs/protocol.md, "Damaged batches", for what a copy does not repair).
func (a *Agent) reproduce(ctx context.Context, g api.GrantInfo, seq uint64, why string) error {
	name := batchName(g.ID, seq)
	h := batch.Header{
		Version: batch.FormatVersion, Kind: batch.KindFiles, Resource: g.Resource, Grant: g.ID,
		Provider: a.id.NodeID, Consumer: g.Consumer, Sequence: seq, Created: time.Now().UTC(), Compression: batch.CompressionNone,
	}
	size, err := batch.Create(a.spoolPath(name), h, bytes.NewReader(nil), a.id.Seal)
	if err != nil {
		os.Remove(a.spoolPath(name))
		return fmt.Errorf("seal empty batch %s: %w", name, err)
	}
	a.copyMu.Lock()
	defer a.copyMu.Unlock()
	var ch connectors.Changes
	v := a.state.view("src/" + g.ID)
	cp, err := loadCopy(v, keyCopy)
	if err != nil {
		return err
	}
	id := ""
	if req, err := loadCopy(v, keyCopyReq); err != nil {
		return err
	} else if req != nil {
		id = req.ID // asked for already: that one makes up for it too
	}
	switch {
	case cp != nil && cp.Active():
		// A copy under way may have read past what the batch held, and a
		// request now would be dropped as a duplicate of it: one more is
		// asked for once it ends (healCopyDone).
		a.log.Warn("a copy is under way while a batch must be made up for; another copy follows it", "grant", g.ID, "copy", cp.ID)
		id = afterCopy + cp.ID
	case id == "":
		id = requestCopy(&ch, g, fmt.Sprintf("batch %d could not be sent", seq))
	}
	ch.Put(keyHealCopy, []byte(id))
	e := spoolEntry{Grant: g.ID, Seq: seq, Resource: g.Resource, File: name, Size: size}
	if err := a.state.commitReproduced(ctx, e, &ch); err != nil {
		os.Remove(a.spoolPath(name))
		return fmt.Errorf("record empty batch %s: %w", name, err)
	}
	a.spool.add(size)
	a.fail(errSpool)
	a.log.Error("batch could not be sent; source changed: a full copy was started so the consumer ends identical", "grant", g.ID, "seq", seq, "why", why, "copy", id)
	a.state.setStopped(g.ID, "provider", fmt.Sprintf("batch %d could not be sent (%s); source changed: a full copy was started (%s) so that the consumer ends identical, and batch %d goes out empty; this clears when the copy is done", seq, why, id, seq))
	select {
	case a.uploadKick <- struct{}{}:
	default:
	}
	return nil
}

// afterCopy prefixes keyHealCopy's value while the make-up copy waits for
// the copy named after it to end.
const afterCopy = "after:"

// requestCopy stages a request for a full copy of a grant, as qz-agent copy
// makes one, and returns its ID.
func requestCopy(ch *connectors.Changes, g api.GrantInfo, reason string) string {
	req := &api.Copy{ID: newCopyID(), Grant: g.ID, Resource: g.Resource, Provider: g.Provider, Consumer: g.Consumer, State: api.CopyRequested,
		Reason: reason, Updated: time.Now().UTC()}
	raw, _ := json.Marshal(req)
	ch.Put(keyCopyReq, raw)
	return req.ID
}

// healCopyDone asks for the make-up copy of a grant once the copy before
// it ended, and clears the grant's stopped note once the consumer has
// applied the make-up copy.
func (a *Agent) healCopyDone(ctx context.Context, g api.GrantInfo) error {
	a.copyMu.Lock()
	defer a.copyMu.Unlock()
	grant := g.ID
	v := a.state.view("src/" + grant)
	raw, ok, err := v.Get(keyHealCopy)
	if err != nil || !ok {
		return err
	}
	id := string(raw)
	cp, err := loadCopy(v, keyCopy)
	if err != nil {
		return err
	}
	var ch connectors.Changes
	if prev, waiting := strings.CutPrefix(id, afterCopy); waiting {
		if cp != nil && cp.ID == prev && cp.Active() {
			return nil
		}
		ch.Put(keyHealCopy, []byte(requestCopy(&ch, g, "a batch could not be sent")))
		return a.state.commitChanges(ctx, "src/"+grant, &ch)
	}
	if cp == nil || cp.ID != id || (cp.State != api.CopyDone && cp.State != api.CopyStopped) {
		return nil
	}
	ch.Delete(keyHealCopy)
	if err := a.state.commitChanges(ctx, "src/"+grant, &ch); err != nil {
		return err
	}
	if cp.State == api.CopyStopped {
		a.state.setStopped(grant, "provider", fmt.Sprintf("the copy %s that was to make up for a batch that could not be sent stopped: %s; start one with qz-agent copy", cp.ID, cp.Reason))
		return nil
	}
	a.state.clearStopped(grant, "provider")
	a.log.Info("the copy that made up for a lost batch is done; the line is whole again", "grant", grant, "copy", cp.ID)
	return nil
}
