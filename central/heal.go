package central

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/http"
	"os"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// maxRejectReason bounds the reason of a rejection kept in the audit log.
const maxRejectReason = 512

// rejection handles a consumer's report that a delivered batch failed its
// checks. The hub checks its own stored copy again: if that fails too, it
// drops the copy and asks the provider for the batch again (RejectResend);
// if it passes, the damage was on the consumer's side (RejectRefetch).
// Rejections of one copy are audited, and the copy re-checked, at counts 1,
// 2, 4, 8 …, so a consumer that rejects without end can neither grow the log
// nor keep the hub reading the payload more than logarithmically.
func (h *Hub) rejection(w http.ResponseWriter, r *http.Request) {
	var rj api.Rejection
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&rj); err != nil {
		httpError(w, http.StatusBadRequest, "malformed rejection")
		return
	}
	ctx := r.Context()
	me := nodeID(r)
	g, err := h.store.Grant(ctx, rj.Grant)
	if err != nil || g.Consumer != me {
		httpError(w, http.StatusForbidden, "only the grant's consumer can reject its batches")
		return
	}
	rj.Reason = clipText(rj.Reason, maxRejectReason) // valid UTF-8: the record's hash is exported
	b, err := h.store.Batch(ctx, g.ID, rj.Sequence)
	if errors.Is(err, store.ErrNotFound) {
		// Dropped a moment ago on another rejection: it is being re-sent.
		if seqs, err := h.store.Resends(ctx, g.ID); err == nil && containsSeq(seqs, rj.Sequence) {
			writeJSON(w, api.RejectionAnswer{Action: api.RejectResend})
			return
		}
		httpError(w, http.StatusNotFound, "no such batch stored")
		return
	}
	if err != nil {
		h.internal(w, "load batch", err)
		return
	}
	if !b.Receipted.IsZero() {
		httpError(w, http.StatusConflict, "batch already receipted by its consumer")
		return
	}
	h.log.Warn("consumer rejected a delivered batch", "node", me, "grant", rj.Grant, "seq", rj.Sequence, "reason", rj.Reason)
	n, err := h.store.NoteRejection(ctx, me, b, rj.Reason)
	if err != nil {
		h.internal(w, "audit", err)
		return
	}
	if bits.OnesCount(uint(n)) != 1 {
		writeJSON(w, api.RejectionAnswer{Action: api.RejectRefetch})
		return
	}
	if cerr := h.checkStored(ctx, g, b); cerr != nil {
		h.metrics.errors.WithLabelValues(errRejected).Inc()
		h.log.Error("stored batch is damaged; dropped it and asked the provider to send it again", "grant", g.ID, "seq", b.Sequence, "err", cerr)
		if err := h.store.DropDamaged(ctx, b, cerr.Error()); err != nil && !errors.Is(err, store.ErrConflict) {
			h.internal(w, "drop damaged batch", err)
			return
		}
		// Record first, then delete: a crash between leaves a stray file
		// that the re-sent batch replaces.
		os.Remove(h.payloadPath(g.ID, b.Sequence))
		h.wake(g.Consumer)
		writeJSON(w, api.RejectionAnswer{Action: api.RejectResend})
		return
	}
	h.log.Info("stored copy of a rejected batch checks; the consumer fetches it again", "grant", g.ID, "seq", b.Sequence)
	writeJSON(w, api.RejectionAnswer{Action: api.RejectRefetch})
}

// checkStored verifies a stored batch's payload as its upload was: seal,
// digest, and a header naming the batch.
func (h *Hub) checkStored(ctx context.Context, g store.Grant, b store.Batch) error {
	info, err := batch.VerifyFile(h.payloadPath(g.ID, b.Sequence), h.nodeKeys(ctx, g.Provider))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return rejectf("payload file is missing")
	case err != nil:
		return err
	case fmt.Sprintf("%x", info.Digest) != b.Digest:
		return rejectf("payload digest %x differs from the one stored with it", info.Digest)
	case info.Header.Grant != g.ID || info.Header.Sequence != b.Sequence:
		return rejectf("payload header names %s/%d", info.Header.Grant, info.Header.Sequence)
	}
	return nil
}

func containsSeq(seqs []uint64, seq uint64) bool {
	for _, s := range seqs {
		if s == seq {
			return true
		}
	}
	return false
}

// resends answers a provider's poll: for each of its batch grants asked
// about, the latest receipt it does not know yet and the batches the hub
// wants again. Grants that are not the caller's are left out of the answer.
func (h *Hub) resends(w http.ResponseWriter, r *http.Request) {
	var p api.ResendPoll
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&p); err != nil {
		httpError(w, http.StatusBadRequest, "malformed resend poll")
		return
	}
	if len(p.Grants) > 10000 {
		httpError(w, http.StatusBadRequest, "a resend poll names at most 10000 grants")
		return
	}
	ctx := r.Context()
	me := nodeID(r)
	out := api.ResendAnswer{Grants: []api.ResendNews{}}
	for _, q := range p.Grants {
		g, err := h.store.Grant(ctx, q.Grant)
		if err != nil || g.Provider != me || g.Mode != api.ModeBatch {
			continue
		}
		news := api.ResendNews{Grant: g.ID}
		if b, err := h.store.LastReceipt(ctx, g.ID); err == nil && b.Sequence > q.After {
			news.Receipt = &api.ReceiptRecord{Sequence: b.Sequence, Size: b.Size, Digest: b.Digest, Stored: b.Stored, Receipted: b.Receipted, Receipt: b.Receipt}
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			h.internal(w, "read receipts", err)
			return
		}
		if g.Active(h.now()) {
			if news.Resend, err = h.store.Resends(ctx, g.ID); err != nil {
				h.internal(w, "read resends", err)
				return
			}
		}
		if news.Receipt != nil || len(news.Resend) > 0 {
			out.Grants = append(out.Grants, news)
		}
	}
	writeJSON(w, out)
}
