package central

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
)

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
