package central

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
)

// grantRefusal records a provider's report that it will not serve one of
// its grants: the last word on what leaves a department is its own
// agent's, and the hub's operators learn of each refusal from the audit
// log. The agent reports a refusal once per reason, so these records stay
// few.
func (h *Hub) grantRefusal(w http.ResponseWriter, r *http.Request) {
	me := nodeID(r)
	var rf api.GrantRefusal
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&rf); err != nil || rf.Grant == "" || strings.TrimSpace(rf.Reason) == "" {
		httpError(w, http.StatusBadRequest, "malformed refusal: want {\"grant\": ID, \"reason\": TEXT}")
		return
	}
	g, err := h.store.Grant(r.Context(), rf.Grant)
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no such grant")
		return
	}
	if err != nil {
		h.internal(w, "load grant", err)
		return
	}
	if g.Provider != me {
		h.store.Audit(r.Context(), me, "access.refuse", g.ID, "refusal report for a grant the node does not provide")
		httpError(w, http.StatusForbidden, "this grant is not yours")
		return
	}
	reason := strings.Join(strings.Fields(rf.Reason), " ")
	if len(reason) > api.MaxRefusalReason {
		reason = strings.ToValidUTF8(reason[:api.MaxRefusalReason], "") + "…"
	}
	if err := h.store.Audit(r.Context(), me, "grant.refuse", g.ID, "the provider does not serve it: "+reason); err != nil {
		h.internal(w, "audit refusal", err)
		return
	}
	h.log.Warn("provider refuses a grant", "grant", g.ID, "provider", me, "resource", g.Resource, "consumer", g.Consumer, "reason", reason)
	w.WriteHeader(http.StatusNoContent)
}
