package central

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// Audit records a node causes by what it sends (refused calls, rejected
// deliveries, receipts and batches, refused accesses) are bounded per
// node: a node sending what cannot succeed in a loop would otherwise grow
// the database and the audit log as fast as it sends. Past the limit the
// records are counted, and summed up in one audit record a minute per
// node and action. Each record's detail is clipped too.

// Records written one by one per node: auditRate a second, after a burst
// of auditBurst.
const (
	auditRate  = 20
	auditBurst = 200
	// maxAuditDetail bounds the text a node puts into one audit record.
	maxAuditDetail = 1024
)

// auditLimiter counts the audit records each node causes.
type auditLimiter struct {
	mu    sync.Mutex
	nodes map[string]*nodeRecords
}

type nodeRecords struct {
	lim     *rate.Limiter
	skipped map[string]*skippedRecords // action → records not written since the last summary
}

type skippedRecords struct {
	n    int
	last string // the detail of the last of them
}

// auditSummary is what a summary record says.
type auditSummary struct {
	node, action string
	skippedRecords
}

func newAuditLimiter() *auditLimiter { return &auditLimiter{nodes: map[string]*nodeRecords{}} }

// allow reports whether a record a node caused is written one by one; if
// not, it is counted for the next summary.
func (a *auditLimiter) allow(node, action, detail string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.nodes[node]
	if r == nil {
		r = &nodeRecords{lim: rate.NewLimiter(auditRate, auditBurst), skipped: map[string]*skippedRecords{}}
		a.nodes[node] = r
	}
	if r.lim.Allow() {
		return true
	}
	s := r.skipped[action]
	if s == nil {
		s = &skippedRecords{}
		r.skipped[action] = s
	}
	s.n++
	s.last = detail
	return false
}

// take returns the counts since the last call and starts them over.
func (a *auditLimiter) take() []auditSummary {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []auditSummary
	for node, r := range a.nodes {
		for action, s := range r.skipped {
			out = append(out, auditSummary{node: node, action: action, skippedRecords: *s})
		}
		clear(r.skipped)
		// A node quiet for long is forgotten: its limiter is full again.
		if r.lim.Tokens() >= auditBurst {
			delete(a.nodes, node)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].node < out[j].node || out[i].node == out[j].node && out[i].action < out[j].action
	})
	return out
}

// skippedNoun names, for a summary, what records of an action are.
var skippedNoun = map[string]string{
	"call.refused":    "refused calls",
	"delivery.reject": "rejections of delivered batches",
	"receipt.reject":  "refused receipts",
	"batch.reject":    "rejected batches",
	"access.refuse":   "refused accesses",
	"catalog.refuse":  "refused catalog entries",
}

// auditNode writes an audit record that node's request caused, clipped,
// unless the node is over its rate: then it goes into the next summary.
func (h *Hub) auditNode(ctx context.Context, node, action, subject, detail string) error {
	detail = clipText(detail, maxAuditDetail)
	if !h.nodeAudits.allow(node, action, subject+": "+detail) {
		return nil
	}
	return h.store.Audit(ctx, node, action, subject, detail)
}

// flushNodeAudits writes the summaries of records not written one by one
// (called by the janitor, about once a minute).
func (h *Hub) flushNodeAudits(ctx context.Context) {
	for _, s := range h.nodeAudits.take() {
		noun := skippedNoun[s.action]
		if noun == "" {
			noun = s.action + " records"
		}
		detail := clipText(fmt.Sprintf("%d more %s, over %d a second, not recorded one by one; the last: %s", s.n, noun, auditRate, s.last), maxAuditDetail)
		if err := h.store.Audit(ctx, s.node, s.action, "summary", detail); err != nil {
			h.log.Error("cannot record the summary of a node's audit records", "node", s.node, "action", s.action, "records", s.n, "err", err)
		}
	}
}

// clipText cuts s to at most n bytes on a character boundary, marking the
// cut; the audit record must stay valid UTF-8 (its hash is exported).
func clipText(s string, n int) string {
	if len(s) <= n {
		return strings.ToValidUTF8(s, "�")
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.ToValidUTF8(s[:n], "�") + "…"
}
