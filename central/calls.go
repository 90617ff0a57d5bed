package central

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/cli"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// Query (查询引用) and verify (比对验证) calls pass through the hub: a
// consumer posts a call, the hub checks it against the catalog and the
// consumer's grant, queues it for the provider's agent (which long-polls
// for calls), waits for the answer, checks that the provider's receipt
// names the call and fits the answer (its seal, and a keyed receipt's
// digests, which the hub cannot compute, are checked by the consumer's
// agent, which relies on them) and hands the answer back. The answer is
// never stored: each call leaves a record (with the receipt, for an
// answered one) and an audit record, neither of which lets the hub
// confirm a guess of the parameters when the receipt is keyed.
//
// Everything a call reads is held in memory so that the database is only
// written, once per group of calls: the approved catalog (read again at
// most once a second), each consumer's grants (until grants change), the
// providers' seal keys, and each grant's rate limiter and day's count.

// callRecentPoll is how long after a provider's last poll returned it
// still counts as connected: an agent polls again at once after each.
const callRecentPoll = 3 * time.Second

// maxCallJobs is the most calls one poll hands a provider.
const maxCallJobs = 256

// callState is the hub's in-memory side of calls.
type callState struct {
	mu        sync.Mutex
	providers map[string]*callQueue   // provider node → its calls and polls
	waiting   map[string]*pendingCall // call ID → the call waiting for its answer

	catMu      sync.Mutex
	catalog    map[string]api.CatalogVersion // approved entries by resource
	catAt      time.Time                     // when catalog was read
	catLoading bool

	grantMu sync.Mutex
	grants  map[string]grantSet // consumer → its grants

	limMu  sync.Mutex
	limits map[string]*grantLimit // grant ID → its limits

	keyMu sync.Mutex
	keys  map[string]seal.PublicKey // "node/keyID" → key

	writer *recordWriter
}

func newCallState(st store.Store, log *slog.Logger) *callState {
	return &callState{providers: map[string]*callQueue{}, waiting: map[string]*pendingCall{}, grants: map[string]grantSet{},
		limits: map[string]*grantLimit{}, keys: map[string]seal.PublicKey{}, writer: newRecordWriter(st, log)}
}

// callQueue is one provider's queued calls and the polls waiting for them.
type callQueue struct {
	jobs     []*pendingCall
	wake     chan struct{} // closed when calls are queued; nil until a poll waits
	polls    int           // polls waiting now
	lastPoll time.Time     // when a poll last returned
}

// pendingCall is a call forwarded to its provider, waiting for the answer.
type pendingCall struct {
	job      api.CallJob
	provider string
	answer   chan callResult // buffered: the one answer never blocks
}

// callResult is what the provider's answer came to: an answer checked
// against its receipt, or why it is not one.
type callResult struct {
	answer api.CallAnswer
	failed string // the provider's own error
	bad    error  // the answer failed the hub's checks
}

// grantSet is a consumer's grants as read while gen was open.
type grantSet struct {
	grants []store.Grant
	gen    <-chan struct{}
}

// grantLimit is one grant's rate limiter and the calls counted today.
type grantLimit struct {
	rate  float64
	quota int
	lim   *rate.Limiter

	mu     sync.Mutex
	loaded bool // used was read from the store
	day    calendar.Date
	used   int
}

// callError is a call the hub ends without an answer: the status it is
// recorded with, the HTTP status and message the consumer gets, and the
// reason recorded (the message, unless it could hold parameter values).
type callError struct {
	status string
	code   int
	msg    string
	reason string
}

func (e *callError) Error() string { return e.msg }

func refuse(code int, format string, args ...any) *callError {
	return &callError{status: api.CallRefused, code: code, msg: fmt.Sprintf(format, args...)}
}

// newCallID is a call's random ID.
func newCallID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// call is POST /v1/calls: the caller is the consumer.
func (h *Hub) call(w http.ResponseWriter, r *http.Request) {
	h.inflight.Add(1)
	defer h.inflight.Done()
	start := time.Now()
	rec := api.CallRecord{ID: newCallID(), Consumer: nodeID(r), Asked: h.now()}
	ans, cerr := h.runCall(r, &rec)
	rec.TookMS = float64(time.Since(start).Microseconds()) / 1000
	if cerr == nil {
		rec.Status, rec.Receipt = api.CallAnswered, ans.Receipt
	} else {
		rec.Status, rec.Reason = cerr.status, orElse(cerr.reason, cerr.msg)
	}
	// A refused call is a record its consumer caused, bounded as the
	// others are (nodeaudit.go).
	if rec.Status != api.CallRefused || h.nodeAudits.allow(rec.Consumer, "call.refused", rec.Reason) {
		if err := h.calls.writer.write(rec); err != nil {
			// Without its record the call did not happen: no answer leaves.
			h.internal(w, "record call", err)
			return
		}
	}
	mode := rec.Mode
	if mode != api.ModeQuery && mode != api.ModeVerify {
		mode = "unknown"
	}
	h.metrics.calls.WithLabelValues(mode, rec.Status).Inc()
	if cerr != nil {
		if cerr.status == api.CallRefused {
			h.metrics.errors.WithLabelValues(errRefused).Inc()
		}
		if r.Context().Err() == nil {
			httpError(w, cerr.code, cerr.msg)
		}
		return
	}
	h.metrics.callSeconds.WithLabelValues(mode).Observe(time.Since(start).Seconds())
	writeJSON(w, ans)
}

// orElse returns a unless it is empty, else b.
func orElse(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// runCall checks a call, forwards it and waits for its answer, filling in
// the record as it learns what the call is.
func (h *Hub) runCall(r *http.Request, rec *api.CallRecord) (*api.CallAnswer, *callError) {
	ctx := r.Context()
	var req api.CallRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		e := refuse(http.StatusBadRequest, "malformed call (%v): send a JSON call request of at most 64 KiB with resource, call, mode and params", err)
		e.reason = "malformed call"
		return nil, e
	}
	rec.Resource, rec.Call, rec.Mode = clip(req.Resource), clip(req.Call), clip(req.Mode)
	if req.Mode != api.ModeQuery && req.Mode != api.ModeVerify {
		return nil, refuse(http.StatusBadRequest, "mode %q: a call is in mode query or verify", rec.Mode)
	}
	v, ok, err := h.approvedEntry(ctx, req.Resource)
	if err != nil {
		return nil, h.callInternal("read catalog", err)
	}
	if !ok {
		return nil, refuse(http.StatusNotFound, "resource %s is not in the catalog: find resources with 'qz-agent catalog search'", rec.Resource)
	}
	rec.Provider = v.Provider
	if !slices.Contains(v.Entry.Modes, req.Mode) {
		return nil, refuse(http.StatusForbidden, "resource %s is no longer offered in mode %s (its catalog entry offers: %s)", rec.Resource, req.Mode, strings.Join(v.Entry.Modes, ", "))
	}
	decl, ok := v.Entry.CallNamed(req.Call)
	if !ok {
		var names []string
		for _, c := range v.Entry.Calls {
			names = append(names, c.Name)
		}
		if len(names) == 0 {
			names = []string{"none"}
		}
		return nil, refuse(http.StatusNotFound, "resource %s declares no call %s (it declares: %s)", req.Resource, rec.Call, strings.Join(names, ", "))
	}
	g, cerr := h.callGrant(ctx, rec.Consumer, req.Resource, req.Mode)
	if g.ID != "" {
		rec.Grant = g.ID
	}
	if cerr != nil {
		return nil, cerr
	}
	rec.Provider = g.Provider
	// The job carries the parameters as the consumer sent them (checked,
	// not normalised), so that the receipt's digest of them is one the
	// consumer can compute; the provider normalises them to bind them.
	_, err = decl.CheckParams(req.Params)
	if err != nil {
		e := refuse(http.StatusBadRequest, "%v", err)
		e.reason = decl.Problem(req.Params) // the checks' messages may quote the value
		return nil, e
	}
	var values map[string]string
	if req.Mode == api.ModeVerify {
		if err := decl.CheckValues(req.Values); err != nil {
			return nil, refuse(http.StatusBadRequest, "%v", err)
		}
		if len(g.Fields) > 0 {
			for _, f := range slices.Sorted(maps.Keys(req.Values)) {
				if !slices.Contains(g.Fields, f) {
					return nil, refuse(http.StatusForbidden, "grant %s does not cover field %s (it covers: %s): apply for it to check it", g.ID, f, strings.Join(g.Fields, ", "))
				}
			}
		}
		values = req.Values
	} else {
		if len(req.Values) > 0 {
			return nil, refuse(http.StatusBadRequest, "a query takes no values: values are what a verify call checks")
		}
		if len(g.Fields) > 0 && !slices.ContainsFunc(decl.Fields, func(f string) bool { return slices.Contains(g.Fields, f) }) {
			return nil, refuse(http.StatusForbidden, "grant %s covers none of the fields call %s answers (%s): apply for them", g.ID, decl.Name, strings.Join(decl.Fields, ", "))
		}
	}
	if len(req.ConsumerKey) > 0 && (r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !bytes.Equal(req.ConsumerKey, r.TLS.PeerCertificates[0].RawSubjectPublicKeyInfo)) {
		return nil, refuse(http.StatusBadRequest, "consumer_key is not the public key of the certificate node %s connected with: send that key (PKIX DER), or none", rec.Consumer)
	}
	lim := h.grantLimits(g)
	if !lim.lim.Allow() {
		return nil, refuse(http.StatusTooManyRequests, "grant %s allows %g calls a second; slow down", g.ID, lim.rate)
	}
	ok, err = h.takeQuota(ctx, lim, g.ID)
	if err != nil {
		return nil, h.callInternal("count calls", err)
	}
	if !ok {
		return nil, refuse(http.StatusTooManyRequests, "grant %s's daily quota of %d calls is used up; it renews at 00:00 CST", g.ID, lim.quota)
	}

	timeout := h.cfg.CallTimeout
	if req.TimeoutMS > 0 {
		timeout = min(timeout, time.Duration(req.TimeoutMS)*time.Millisecond)
	}
	job := api.CallJob{ID: rec.ID, Grant: g.ID, Resource: g.Resource, Call: decl.Name, Mode: req.Mode, Consumer: rec.Consumer,
		Params: req.Params, Values: values, Asked: rec.Asked, Deadline: rec.Asked.Add(timeout), ConsumerKey: req.ConsumerKey}
	p, cerr := h.forward(job, g.Provider)
	if cerr != nil {
		h.giveBack(lim) // it never reached the provider
		return nil, cerr
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	var res callResult
	select {
	case res = <-p.answer:
	case <-t.C:
		var answered bool
		if res, answered = h.abandon(p); !answered {
			return nil, &callError{status: api.CallTimeout, code: http.StatusGatewayTimeout,
				msg: fmt.Sprintf("provider %s did not answer within %s: its agent is offline or busy; try again later", g.Provider, timeout)}
		}
	case <-ctx.Done():
		var answered bool
		if res, answered = h.abandon(p); !answered {
			return nil, &callError{status: api.CallTimeout, code: http.StatusGatewayTimeout,
				msg: fmt.Sprintf("the consumer stopped waiting after %s", time.Since(rec.Asked).Round(time.Millisecond))}
		}
	}
	switch {
	case res.failed != "":
		return nil, &callError{status: api.CallFailed, code: http.StatusBadGateway,
			msg:    fmt.Sprintf("provider %s could not answer: %s", g.Provider, res.failed),
			reason: fmt.Sprintf("provider %s could not answer: %s", g.Provider, redact(res.failed, req.Params, values))}
	case res.bad != nil:
		h.log.Warn("provider sent an invalid call answer", "provider", g.Provider, "call", job.ID, "err", res.bad)
		return nil, &callError{status: api.CallFailed, code: http.StatusBadGateway,
			msg: fmt.Sprintf("provider %s sent an invalid answer: %v", g.Provider, res.bad)}
	}
	a := res.answer
	a.ID, a.Grant, a.Resource, a.Call, a.Mode, a.Error = job.ID, job.Grant, job.Resource, job.Call, job.Mode, ""
	return &a, nil
}

// callInternal is a call ended by a failure on the hub's side.
func (h *Hub) callInternal(op string, err error) *callError {
	h.metrics.errors.WithLabelValues(errInternal).Inc()
	h.log.Error("call failed", "op", op, "err", err)
	return &callError{status: api.CallFailed, code: http.StatusInternalServerError, msg: op + ": internal error; see the hub log"}
}

// clip bounds a name from the request before it goes into a record.
func clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	n := 64
	for n > 0 && !utf8.RuneStart(s[n]) {
		n-- // never half a character: the audit record must stay valid UTF-8
	}
	return strings.ToValidUTF8(s[:n], "�") + "…"
}

// redact takes a call's parameter and value text out of a provider's
// error before it is recorded.
func redact(s string, params, values map[string]string) string {
	if len(s) > 500 {
		s = s[:500] + "…"
	}
	for _, m := range []map[string]string{params, values} {
		for _, v := range m {
			if len(v) >= 2 {
				s = strings.ReplaceAll(s, v, "[value]")
			}
		}
	}
	return s
}

// callGrant finds the consumer's active grant for the resource in the
// mode, or says why there is none. A refusal may still name a grant (one
// in another mode, or one that ended).
func (h *Hub) callGrant(ctx context.Context, consumer, resource, mode string) (store.Grant, *callError) {
	gs, err := h.consumerGrants(ctx, consumer)
	if err != nil {
		return store.Grant{}, h.callInternal("read grants", err)
	}
	now := h.now()
	var other, ended store.Grant
	for _, g := range gs {
		switch {
		case g.Resource != resource:
		case g.Active(now) && g.Mode == mode:
			return g, nil
		case g.Active(now):
			other = g
		case g.Mode == mode:
			ended = g // the newest, as grants come oldest first
		}
	}
	// The grant that ended in this mode says more than one in another.
	apply := fmt.Sprintf("'qz-agent apply %s --mode %s …'", resource, mode)
	switch {
	case ended.ID != "" && ended.Status == store.GrantRevoked:
		return ended, refuse(http.StatusForbidden, "grant %s for %s in mode %s was revoked: apply again with %s", ended.ID, resource, mode, apply)
	case ended.ID != "":
		return ended, refuse(http.StatusForbidden, "grant %s for %s in mode %s expired on %s: apply again with %s", ended.ID, resource, mode,
			ended.Expires.In(calendar.CST).Format(time.DateTime)+" CST", apply)
	case other.ID != "":
		return other, refuse(http.StatusForbidden, "grant %s for %s is for mode %s, not %s: apply with %s", other.ID, resource, other.Mode, mode, apply)
	}
	return store.Grant{}, refuse(http.StatusForbidden, "node %s has no grant for %s in mode %s: apply with %s and wait for approval", consumer, resource, mode, apply)
}

// consumerGrants returns the grants a node consumes, from memory until
// grants change (watchGrants notices within 250 ms, changes the admin CLI
// makes in the database included).
func (h *Hub) consumerGrants(ctx context.Context, node string) ([]store.Grant, error) {
	c := h.calls
	c.grantMu.Lock()
	set, ok := c.grants[node]
	c.grantMu.Unlock()
	if ok {
		select {
		case <-set.gen:
		default:
			return set.grants, nil
		}
	}
	gen := h.grantsChanged() // before reading, so a change while reading is not missed
	gs, err := h.store.GrantsFor(ctx, node)
	if err != nil {
		return nil, err
	}
	mine := gs[:0]
	for _, g := range gs {
		if g.Consumer == node {
			mine = append(mine, g)
		}
	}
	c.grantMu.Lock()
	c.grants[node] = grantSet{grants: mine, gen: gen}
	c.grantMu.Unlock()
	return mine, nil
}

// approvedEntry returns a resource's approved catalog entry. The catalog
// is read again when the copy in memory is a second old; while one
// request reads it, the others use the old copy.
func (h *Hub) approvedEntry(ctx context.Context, resource string) (api.CatalogVersion, bool, error) {
	c := h.calls
	c.catMu.Lock()
	if c.catalog != nil && (time.Since(c.catAt) < time.Second || c.catLoading) {
		v, ok := c.catalog[resource]
		c.catMu.Unlock()
		return v, ok, nil
	}
	c.catLoading = true
	c.catMu.Unlock()
	vs, err := h.store.CatalogApproved(ctx)
	c.catMu.Lock()
	defer c.catMu.Unlock()
	c.catLoading = false
	if err != nil {
		return api.CatalogVersion{}, false, err
	}
	m := make(map[string]api.CatalogVersion, len(vs))
	for _, v := range vs {
		m[v.Entry.Resource] = v
	}
	c.catalog, c.catAt = m, time.Now()
	v, ok := m[resource]
	return v, ok, nil
}

// grantLimits returns a grant's limiter and counter, made on first use
// with the grant's rate and quota or the hub's defaults.
func (h *Hub) grantLimits(g store.Grant) *grantLimit {
	c := h.calls
	c.limMu.Lock()
	defer c.limMu.Unlock()
	if l, ok := c.limits[g.ID]; ok {
		return l
	}
	r, q := h.effectiveLimits(g)
	l := &grantLimit{rate: r, quota: q, lim: rate.NewLimiter(rate.Limit(r), max(1, int(math.Ceil(r))))}
	c.limits[g.ID] = l
	return l
}

// effectiveLimits are a grant's rate and quota: its own, or the hub's.
func (h *Hub) effectiveLimits(g store.Grant) (float64, int) {
	r, q := g.Rate, g.Quota
	if r <= 0 {
		r = h.cfg.CallRate
	}
	if q <= 0 {
		q = h.cfg.CallQuota
	}
	return r, q
}

// takeQuota counts a call against the grant's quota for the day (CST),
// if any is left. The first count after a start comes from the records.
func (h *Hub) takeQuota(ctx context.Context, l *grantLimit, grant string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	day := calendar.DateOf(h.now())
	switch {
	case !l.loaded:
		n, err := h.store.CallCount(ctx, grant, day.Time())
		if err != nil {
			return false, err
		}
		l.loaded, l.day, l.used = true, day, n
	case day != l.day:
		l.day, l.used = day, 0
	}
	if l.used >= l.quota {
		return false, nil
	}
	l.used++
	return true, nil
}

// giveBack returns a call to the quota it was counted against.
func (h *Hub) giveBack(l *grantLimit) {
	l.mu.Lock()
	l.used = max(l.used-1, 0)
	l.mu.Unlock()
}

// forward queues a call for its provider and wakes the provider's polls.
// A provider with no poll waiting and none lately is offline: the call
// ends at once rather than after its timeout.
func (h *Hub) forward(job api.CallJob, provider string) (*pendingCall, *callError) {
	c := h.calls
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue(provider)
	if q.polls == 0 && time.Since(q.lastPoll) > callRecentPoll {
		seen := "not seen since the hub started"
		h.metrics.seenMu.Lock()
		if t, ok := h.metrics.seen[provider]; ok {
			seen = "last seen " + t.In(calendar.CST).Format(time.DateTime) + " CST"
		}
		h.metrics.seenMu.Unlock()
		// Recorded as refused: the call never left the hub, and does not
		// count against the grant's quota.
		return nil, &callError{status: api.CallRefused, code: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("provider %s is not connected (%s): its agent is offline, or busy with as many calls as it takes at once; try again later", provider, seen)}
	}
	p := &pendingCall{job: job, provider: provider, answer: make(chan callResult, 1)}
	c.waiting[job.ID] = p
	q.jobs = append(q.jobs, p)
	if q.wake != nil {
		close(q.wake)
		q.wake = nil
	}
	return p, nil
}

// queue returns a provider's queue; c.mu is held.
func (c *callState) queue(provider string) *callQueue {
	q, ok := c.providers[provider]
	if !ok {
		q = &callQueue{}
		c.providers[provider] = q
	}
	return q
}

// abandon takes a call that ran out of time off the waiting list, so a
// late answer finds nothing. If the answer came first, it returns it.
func (h *Hub) abandon(p *pendingCall) (callResult, bool) {
	c := h.calls
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.waiting[p.job.ID]; ok {
		delete(c.waiting, p.job.ID)
		return callResult{}, false
	}
	return <-p.answer, true // delivered under c.mu before it left the list
}

// nextCalls is GET /v1/calls/next?wait=25s: the calling provider's queued
// calls, at most maxCallJobs, or [] when the wait ends. Each call goes to
// one poll only.
func (h *Hub) nextCalls(w http.ResponseWriter, r *http.Request) {
	me := nodeID(r)
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	wait = min(max(wait, 0), 60*time.Second)
	// max is how many calls the provider can start now: it asks for no
	// more than it has workers free, so calls wait here, where the hub
	// sees them, not in a busy agent.
	limit := maxCallJobs
	if m, err := strconv.Atoi(r.URL.Query().Get("max")); err == nil && m > 0 {
		limit = min(m, maxCallJobs)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	c := h.calls
	c.mu.Lock()
	q := c.queue(me)
	q.polls++
	defer func() {
		c.mu.Lock()
		q.polls--
		q.lastPoll = time.Now()
		c.mu.Unlock()
	}()
	out := []api.CallJob{}
	for {
		if r.Context().Err() != nil {
			c.mu.Unlock()
			return // a poll that has gone takes no calls
		}
		now := h.now()
		n := 0
		for _, p := range q.jobs {
			if len(out) == limit {
				q.jobs[n] = p
				n++
				continue
			}
			if _, live := c.waiting[p.job.ID]; live && now.Before(p.job.Deadline) {
				j := p.job
				j.TimeoutMS = max(int(j.Deadline.Sub(now).Milliseconds()), 1)
				out = append(out, j)
			}
		}
		clear(q.jobs[n:])
		q.jobs = q.jobs[:n]
		if len(out) > 0 {
			break
		}
		if q.wake == nil {
			q.wake = make(chan struct{})
		}
		wake := q.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-timer.C:
			writeJSON(w, out)
			return
		case <-r.Context().Done():
			return
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	writeJSON(w, out)
}

// answerCall is POST /v1/calls/{id}/answer: the provider the call went to
// posts its answer, which the hub checks against the signed receipt
// before handing it to the waiting consumer.
func (h *Hub) answerCall(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var a api.CallAnswer
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&a); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("malformed answer to call %s (%v): send a JSON call answer of at most 8 MiB", clip(id), err))
		return
	}
	a.ID = id
	res := h.takeAnswer(r.Context(), nodeID(r), &a)
	if res.Status != http.StatusNoContent {
		httpError(w, res.Status, res.Error)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// answerCalls takes several answers in one request (POST /v1/calls/answers):
// a provider answering many calls at once sends them together, which
// halves the requests a call costs the hub. Each answer gets its own
// result, as answerCall would have answered it alone.
func (h *Hub) answerCalls(w http.ResponseWriter, r *http.Request) {
	var as []api.CallAnswer
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(&as); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("malformed call answers (%v): send a JSON list of call answers, 64 MiB at most", err))
		return
	}
	if len(as) > 1024 {
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("%d answers in one request: send at most 1024", len(as)))
		return
	}
	me := nodeID(r)
	out := make([]api.AnswerResult, len(as))
	for i := range as {
		out[i] = h.takeAnswer(r.Context(), me, &as[i])
	}
	writeJSON(w, out)
}

// takeAnswer hands a provider's answer to the consumer waiting for it,
// after checking it against its receipt. The result's status is 204 when
// the answer was taken, 404 when the call is unknown or timed out, 403
// when it went to another provider and 422 when the answer does not match
// its receipt (the consumer then gets a 502).
func (h *Hub) takeAnswer(ctx context.Context, me string, a *api.CallAnswer) api.AnswerResult {
	id := a.ID
	fail := func(code int, format string, args ...any) api.AnswerResult {
		return api.AnswerResult{ID: id, Status: code, Error: fmt.Sprintf(format, args...)}
	}
	c := h.calls
	c.mu.Lock()
	p, ok := c.waiting[id]
	c.mu.Unlock()
	if !ok {
		return fail(http.StatusNotFound, "call %s is unknown or already timed out", clip(id))
	}
	if p.provider != me {
		return fail(http.StatusForbidden, "call %s went to provider %s, not to node %s", id, p.provider, me)
	}
	res := callResult{answer: *a}
	if a.Error != "" {
		res.failed = a.Error
		if len(res.failed) > 2000 {
			res.failed = res.failed[:2000] + "…"
		}
	} else {
		res.bad = h.checkAnswer(ctx, p.job, me, a)
	}
	c.mu.Lock()
	_, ok = c.waiting[id]
	if ok {
		delete(c.waiting, id)
		p.answer <- res
	}
	c.mu.Unlock()
	switch {
	case !ok:
		return fail(http.StatusNotFound, "call %s is unknown or already timed out", id)
	case res.bad != nil:
		return fail(http.StatusUnprocessableEntity, "answer to call %s rejected: %v", id, res.bad)
	}
	return api.AnswerResult{ID: id, Status: http.StatusNoContent}
}

// checkAnswer checks an answer against its receipt: sealed by the
// provider, for this call, covering these parameters and this answer.
func (h *Hub) checkAnswer(ctx context.Context, job api.CallJob, provider string, a *api.CallAnswer) error {
	if len(a.Receipt) == 0 {
		return errors.New("the answer has no receipt")
	}
	rc, err := receipt.ParseCall(a.Receipt)
	if err != nil {
		return err
	}
	// The seal must be a key of the provider's. The signature itself is
	// checked by the consumer's agent before it uses the answer, and by
	// whoever lists the receipts (qz-agent calls, qz-central calls): at
	// 2,000 calls a second a second check here cost the hub a fifth of
	// its time for no protection the consumer does not already have.
	pub, err := h.cachedSealKey(ctx, provider, rc.SealKeyID)
	if err != nil {
		return fmt.Errorf("receipt seal key: %w", err)
	}
	if rc.Version != receipt.CallPlain && rc.Version != receipt.CallKeyed || rc.SealAlg != pub.Algorithm() || len(rc.Signature) == 0 {
		return fmt.Errorf("the receipt is version %d sealed with %s; want version %d or %d sealed with %s", rc.Version, clip(rc.SealAlg),
			receipt.CallPlain, receipt.CallKeyed, pub.Algorithm())
	}
	if rc.Version == receipt.CallKeyed {
		// The digests are keyed with the call's key, which the hub never
		// has (so that its records cannot confirm a guessed parameter):
		// the consumer's agent checks them.
		return rc.Describes(job, provider, a)
	}
	// A version 1 receipt, from a provider's agent older than keyed
	// receipts: its plain digests can be checked here.
	return rc.Covers(job, provider, a, nil)
}

// cachedSealKey returns a node's seal key by ID, from memory after the first
// time: a key ID names one key for good.
func (h *Hub) cachedSealKey(ctx context.Context, node, keyID string) (seal.PublicKey, error) {
	c := h.calls
	k := node + "/" + keyID
	c.keyMu.Lock()
	pub, ok := c.keys[k]
	c.keyMu.Unlock()
	if ok {
		return pub, nil
	}
	pub, err := h.nodeKeys(ctx, node)(keyID)
	if err != nil {
		return pub, err
	}
	c.keyMu.Lock()
	c.keys[k] = pub
	c.keyMu.Unlock()
	return pub, nil
}

// listCalls is GET /v1/calls?grant=G&limit=N: the calls the caller made or
// answered, newest first.
func (h *Hub) listCalls(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: use 1 to 1000", clip(s)))
			return
		}
		limit = n
	}
	recs, err := h.store.Calls(r.Context(), nodeID(r), r.URL.Query().Get("grant"), limit)
	if err != nil {
		h.internal(w, "list calls", err)
		return
	}
	if recs == nil {
		recs = []api.CallRecord{}
	}
	writeJSON(w, recs)
}

// recordWriter writes call records in groups: one goroutine takes every
// record waiting, writes them all in one transaction, tells each waiter,
// and repeats. A commit waits for the disk (synchronous=FULL), so one
// transaction per call would bound the calls a second by the disk's
// flushes.
type recordWriter struct {
	st  store.Store
	log *slog.Logger

	mu     sync.Mutex
	queue  []pendingRecord
	closed bool
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

type pendingRecord struct {
	rec  api.CallRecord
	done chan error
}

// maxRecordGroup bounds one transaction, so a backlog is written in steps.
const maxRecordGroup = 2000

// errHubStopping refuses calls ending while the hub shuts down.
var errHubStopping = errors.New("the hub is stopping")

func newRecordWriter(st store.Store, log *slog.Logger) *recordWriter {
	w := &recordWriter{st: st, log: log, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// write records one call and returns once it is committed.
func (w *recordWriter) write(rec api.CallRecord) error {
	done := make(chan error, 1)
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return errHubStopping
	}
	w.queue = append(w.queue, pendingRecord{rec, done})
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	return <-done
}

func (w *recordWriter) run() {
	defer close(w.done)
	for {
		select {
		case <-w.kick:
		case <-w.stop:
			w.flush()
			return
		}
		w.flush()
	}
}

// flush writes what waits, group by group, until nothing does.
func (w *recordWriter) flush() {
	for {
		w.mu.Lock()
		n := min(len(w.queue), maxRecordGroup)
		group := slices.Clone(w.queue[:n])
		w.queue = w.queue[n:]
		w.mu.Unlock()
		if n == 0 {
			return
		}
		recs := make([]api.CallRecord, n)
		for i, p := range group {
			recs[i] = p.rec
		}
		err := w.st.RecordCalls(context.Background(), recs)
		if err != nil {
			w.log.Error("call records not written", "calls", n, "err", err)
		}
		for _, p := range group {
			p.done <- err
		}
	}
}

// close writes what waits and stops the writer; later writes fail.
func (w *recordWriter) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	<-w.done
}

// listCalls is qz-central calls: the call records, newest first, as a
// table or JSON.
func listCalls(ctx context.Context, st store.Store, o *opts, w io.Writer) error {
	if o.limit < 1 || o.limit > 100000 {
		return cli.Usagef("--limit %d: use 1 to 100000", o.limit)
	}
	recs, err := st.Calls(ctx, o.node, o.grantID, o.limit)
	if err != nil {
		return err
	}
	// Each receipt's seal is checked here, where the records are used.
	lines := make([]callLine, len(recs))
	for i, r := range recs {
		lines[i].CallRecord = r
		if len(r.Receipt) > 0 {
			lines[i].Seal = "verified"
			if err := receipt.CheckCallSeal(r.Receipt, func(node, keyID string) (seal.PublicKey, error) {
				text, err := st.SealKey(ctx, node, keyID)
				if err != nil {
					return seal.PublicKey{}, err
				}
				return seal.ParsePublic(text)
			}); err != nil {
				lines[i].Seal = "BAD: " + err.Error()
			}
		}
	}
	if o.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(lines)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ASKED\tCALL\tMODE\tCONSUMER → PROVIDER\tRESOURCE/CALL\tSTATUS\tTOOK MS\tRECEIPT\tREASON")
	for _, r := range lines {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s → %s\t%s/%s\t%s\t%.1f\t%s\t%s\n", r.Asked.In(calendar.CST).Format("2006-01-02 15:04:05.000"), r.ID, r.Mode,
			r.Consumer, orElse(r.Provider, "-"), r.Resource, r.Call, r.Status, r.TookMS, orElse(r.Seal, "-"), orElse(r.Reason, "-"))
	}
	return tw.Flush()
}

// callLine is a call record with what became of checking its receipt's
// seal: "verified", or "BAD: why".
type callLine struct {
	api.CallRecord
	Seal string `json:"seal,omitempty"`
}
