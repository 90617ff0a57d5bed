package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/mask"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// How the provider's agent takes calls from the hub.
const (
	// callWorkers bounds the calls answered at once (and so the
	// connections they hold on a resource's database).
	callWorkers = 32
	// callPolls long polls wait at the hub at once, so that while one
	// poll's jobs are handed out and the next poll is on its way, the
	// other is there to take new calls: the hub gives each job to one
	// poll only.
	callPolls = 2
	// callIdle is how often a node that declares no calls looks again (a
	// reload may add some).
	callIdle = 3 * time.Second
	// callDefaultTime bounds a call whose job carries no deadline.
	callDefaultTime = 30 * time.Second
	// callPosters send answers to the hub; each takes every answer
	// ready when it is free (up to callBatch) and sends them in one
	// request, so under load a call costs the hub about one request
	// instead of two, while a lone answer still goes at once.
	callPosters = 2
	callBatch   = 256
)

// Statuses of qz_calls_total.
const (
	callAnswered = "answered" // answered with a receipt
	callRefused  = "refused"  // refused here: grant, parameters, resource not open
	callFailed   = "failed"   // the database could not answer
	callLate     = "late"     // the hub had given up on the call (or its deadline had passed)
)

// callLoop answers the calls the hub hands this provider, while any
// resource declares calls.
func (a *Agent) callLoop(ctx context.Context) {
	s := &callServer{a: a, log: a.log.With("loop", "calls"), sem: make(chan struct{}, callWorkers),
		signer: newCallSigner(a.id.Seal), out: make(chan answered, 4*callWorkers)}
	keys, err := receipt.NewCallKeyer(a.id.Cert.PrivateKey)
	if err != nil {
		// Calls are still answered, with plain (version 1) receipts.
		s.log.Warn("the node key cannot agree call keys: call receipts will not be keyed, and the hub's records of calls could confirm guessed parameters; re-enrol the node for a P-256 key", "err", err)
	}
	s.keys = keys
	var wg sync.WaitGroup
	for range callPosters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.postLoop(ctx)
		}()
	}
	for range callPolls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.poll(ctx, &wg)
		}()
	}
	wg.Wait()
}

// callServer is the state the call loop shares between its polls and
// workers.
type callServer struct {
	a      *Agent
	log    *slog.Logger
	sem    chan struct{} // a slot per running worker
	signer batch.Signer
	keys   *receipt.CallKeyer // nil: receipts are not keyed
	out    chan answered      // answers for the posters

	pollFails atomic.Int64 // failed polls in a row, across polls
	postFails atomic.Int64 // answers the hub could not be given, in a row
	dbFails   atomic.Int64 // calls the database failed, in a row

	// Plans are kept for the config and grants they were made for, and
	// dropped together when either changes.
	mu    sync.Mutex
	cfg   *Config
	gen   <-chan struct{}
	plans map[string]*callPlan // by grant and call
}

// poll long-polls the hub for calls and hands each to a worker. It asks
// for no more calls than there are workers free and waits for a worker
// before it polls again, so a slow database holds calls at the hub (which
// times them out) rather than in this process.
func (s *callServer) poll(ctx context.Context, wg *sync.WaitGroup) {
	attempt := 0
	for ctx.Err() == nil {
		if !declaresCalls(s.a.config()) {
			if !sleepCtx(ctx, callIdle) {
				return
			}
			continue
		}
		asked := time.Now()
		jobs, err := s.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.a.fail(errHub)
			if s.pollFails.Add(1) == 1 {
				s.log.Warn("cannot take calls from the hub; retrying", "err", err)
			}
			if !backoff(ctx, attempt) {
				return
			}
			attempt++
			continue
		}
		attempt = 0
		if s.pollFails.Load() != 0 && s.pollFails.Swap(0) != 0 {
			s.log.Info("taking calls from the hub again")
		}
		if len(jobs) == 0 && time.Since(asked) < time.Second {
			// A hub that does not hold the poll open is asked once a
			// second, not in a busy loop.
			if !sleepCtx(ctx, time.Second) {
				return
			}
		}
		for _, j := range jobs {
			select {
			case s.sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-s.sem }()
				s.serve(ctx, j)
			}()
		}
	}
}

// declaresCalls reports whether any resource of c declares calls.
func declaresCalls(c *Config) bool {
	for i := range c.Resources {
		if len(c.Resources[i].Calls) > 0 {
			return true
		}
	}
	return false
}

// next is one long poll: the calls waiting for this node, or none when the
// wait ends.
func (s *callServer) next(ctx context.Context) ([]api.CallJob, error) {
	// No more calls than there are workers free: the others wait at the
	// hub, which counts this node as taking calls while a poll waits.
	free := max(callWorkers-len(s.sem), 1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.a.hub.URL("/v1/calls/next?wait=25s&max="+strconv.Itoa(free)), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.a.hub.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNoContent:
		return nil, nil
	default:
		return nil, &hubError{Status: resp.StatusCode, Msg: apiError(resp)}
	}
	var jobs []api.CallJob
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&jobs); err != nil {
		return nil, fmt.Errorf("read calls from the hub: %w", err)
	}
	return jobs, nil
}

// serve answers one job and gives the answer to the hub.
func (s *callServer) serve(ctx context.Context, job api.CallJob) {
	start := time.Now()
	// The time left is counted from the job's arrival on this clock, which
	// may differ from the hub's; an older hub sends only the deadline.
	deadline := start.Add(time.Duration(job.TimeoutMS) * time.Millisecond)
	switch {
	case job.TimeoutMS > 0:
	case !job.Deadline.IsZero():
		deadline = job.Deadline
	default:
		deadline = start.Add(callDefaultTime)
	}
	if !start.Before(deadline) {
		s.done(ctx, answered{job: job, status: callLate, start: start})
		return
	}
	ans, status := s.answer(ctx, job, deadline)
	select {
	case s.out <- answered{ans: ans, status: status, job: job, start: start, deadline: deadline}:
	case <-ctx.Done():
	}
}

// answered is an answer on its way to the hub.
type answered struct {
	ans      api.CallAnswer
	status   string
	job      api.CallJob
	start    time.Time
	deadline time.Time
}

// postLoop sends answers to the hub: each request carries every answer
// ready by then.
func (s *callServer) postLoop(ctx context.Context) {
	for {
		var batch []answered
		select {
		case x := <-s.out:
			batch = append(batch, x)
		case <-ctx.Done():
			return
		}
	more:
		for len(batch) < callBatch {
			select {
			case x := <-s.out:
				batch = append(batch, x)
			default:
				break more
			}
		}
		s.postAll(ctx, batch)
	}
}

// postAll sends answers in one request and counts each by what became of it.
func (s *callServer) postAll(ctx context.Context, batch []answered) {
	as := make([]api.CallAnswer, len(batch))
	deadline := batch[0].deadline
	for i, b := range batch {
		as[i] = b.ans
		deadline = later(deadline, b.deadline)
	}
	results, err := s.post(ctx, as, deadline)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		s.a.fail(errHub)
		if s.postFails.Add(1) == 1 {
			s.log.Warn("cannot give the hub calls' answers; the consumers' calls time out", "calls", len(batch), "err", err)
		}
		for i := range batch {
			batch[i].status = callFailed
		}
	} else if s.postFails.Load() != 0 {
		s.postFails.Store(0)
	}
	for i, r := range results {
		if i >= len(batch) || r.ID != batch[i].ans.ID {
			break
		}
		switch r.Status {
		case http.StatusNoContent:
		case http.StatusNotFound:
			batch[i].status = callLate
		default:
			batch[i].status = callFailed
			s.log.Warn("the hub refused a call's answer", "call_id", r.ID, "status", r.Status, "err", r.Error)
		}
	}
	for _, b := range batch {
		s.done(ctx, b)
	}
}

// done counts a served call and logs it at debug level (never its values).
func (s *callServer) done(ctx context.Context, b answered) {
	s.a.metrics.calls.WithLabelValues(b.job.Resource, b.job.Mode, b.status).Inc()
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("call served", "call_id", b.job.ID, "resource", b.job.Resource, "call", b.job.Call, "mode", b.job.Mode,
			"consumer", b.job.Consumer, "status", b.status, "took", time.Since(b.start))
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// answer builds the answer to a job: a refusal, a failure or a signed
// answer, with the status to count it under.
func (s *callServer) answer(ctx context.Context, job api.CallJob, deadline time.Time) (api.CallAnswer, string) {
	p, src, err := s.prepare(job)
	if err != nil {
		return refusal(job, err.Error()), callRefused
	}
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	ans, cause := answerCall(cctx, src, p, job, s.a.id.NodeID, s.signer, s.keys, nil)
	switch {
	case cause != nil:
		if n := s.dbFails.Add(1); n%1000 == 1 {
			// The cause may come from the database driver, which can
			// quote what it was given: take the job's values out first.
			s.log.Warn("a call could not be answered", "resource", job.Resource, "call", job.Call,
				"call_id", job.ID, "failures_in_a_row", n, "err", scrub(cause.Error(), job))
		}
		return ans, callFailed
	case ans.Error != "":
		return ans, callRefused
	}
	if s.dbFails.Load() != 0 {
		s.dbFails.Store(0)
	}
	return ans, callAnswered
}

// prepare finds what answers job: the call's plan under its grant, and the
// resource's open source. Every refusal says why in one line.
func (s *callServer) prepare(job api.CallJob) (*callPlan, connectors.Caller, error) {
	a := s.a
	cfg := a.config()
	var entry *Entry
	for i := range cfg.Resources {
		if cfg.Resources[i].ID == job.Resource {
			entry = &cfg.Resources[i]
			break
		}
	}
	if entry == nil {
		return nil, nil, fmt.Errorf("resource %s is not published by node %s (any more)", job.Resource, a.id.NodeID)
	}
	var def *connectors.CallDef
	for i := range entry.Calls {
		if entry.Calls[i].Name == job.Call {
			def = &entry.Calls[i]
			break
		}
	}
	if def == nil {
		var names []string
		for _, c := range entry.Calls {
			names = append(names, c.Name)
		}
		return nil, nil, fmt.Errorf("resource %s declares no call %q at the provider (it declares: %s)", job.Resource, job.Call, strings.Join(names, ", "))
	}
	a.mu.Lock()
	var g api.GrantInfo
	found := false
	for _, x := range a.grants {
		if x.ID == job.Grant {
			g, found = x, true
			break
		}
	}
	gen := a.grantsGen
	src := a.sources[job.Resource]
	a.mu.Unlock()
	if err := checkGrant(g, found, job, a.id.NodeID, time.Now()); err != nil {
		return nil, nil, err
	}
	a.mu.Lock()
	why := a.refusal(g)
	a.mu.Unlock()
	if why != "" {
		return nil, nil, fmt.Errorf("the provider refuses grant %s: %s", g.ID, why)
	}
	caller, ok := src.(connectors.Caller)
	if !ok {
		if src != nil {
			return nil, nil, fmt.Errorf("resource %s is of a kind that does not answer calls", job.Resource)
		}
		return nil, nil, fmt.Errorf("resource %s is not open at the provider: see qz-agent status there", job.Resource)
	}
	key := job.Grant + "\x00" + job.Call
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg != cfg || s.gen != gen || s.plans == nil {
		s.cfg, s.gen, s.plans = cfg, gen, map[string]*callPlan{}
	}
	p := s.plans[key]
	if p == nil {
		var err error
		if p, err = newCallPlan(def, g, a.maskKey); err != nil {
			return nil, nil, err
		}
		s.plans[key] = p
	}
	return p, caller, nil
}

// checkGrant checks that g, this node's view of job's grant, allows the
// job now.
func checkGrant(g api.GrantInfo, found bool, job api.CallJob, me string, now time.Time) error {
	switch {
	case !found || !g.Active:
		return fmt.Errorf("grant %s is not active at the provider yet; try again in a second", job.Grant)
	case !g.Expires.IsZero() && !now.Before(g.Expires):
		return fmt.Errorf("grant %s expired at %s", g.ID, g.Expires.UTC().Format(time.RFC3339))
	case g.Provider != me:
		return fmt.Errorf("grant %s is for provider %s, not %s", g.ID, g.Provider, me)
	case g.Resource != job.Resource:
		return fmt.Errorf("grant %s is for resource %s, not %s", g.ID, g.Resource, job.Resource)
	case g.Mode != job.Mode:
		return fmt.Errorf("grant %s is for mode %s, not %s", g.ID, g.Mode, job.Mode)
	case job.Mode != api.ModeQuery && job.Mode != api.ModeVerify:
		return fmt.Errorf("mode %s is not a call mode (query or verify)", job.Mode)
	case g.Consumer != job.Consumer:
		return fmt.Errorf("grant %s is held by %s, not %s", g.ID, g.Consumer, job.Consumer)
	}
	return nil
}

// callPlan is what a grant lets one call answer, worked out once per grant
// and configuration rather than per call.
type callPlan struct {
	def    *connectors.CallDef
	grant  string
	fields []string     // query: the call's fields the grant lets through, in the call's order
	cols   []int        // their index in def.Fields
	masks  []*mask.Rule // by answered field: the grant's rule, or nil
	secret []byte       // the grant's hashing secret
	// checks, for verify, indexes the fields the grant lets be checked
	// (in def.Fields).
	checks map[string]int
}

// newCallPlan works out what grant g lets call def answer. maskKey is this
// node's masking secret.
func newCallPlan(def *connectors.CallDef, g api.GrantInfo, maskKey []byte) (*callPlan, error) {
	p := &callPlan{def: def, grant: g.ID, checks: map[string]int{}}
	for i, f := range def.Fields {
		if len(g.Fields) > 0 && !slices.Contains(g.Fields, f) {
			continue
		}
		p.checks[f] = i
		p.fields = append(p.fields, f)
		p.cols = append(p.cols, i)
		var rule *mask.Rule
		if text, ok := g.Masks[f]; ok {
			r, err := mask.Parse(text)
			if err != nil {
				return nil, fmt.Errorf("grant %s, field %s: %w", g.ID, f, err)
			}
			rule = &r
		}
		p.masks = append(p.masks, rule)
	}
	if len(p.fields) == 0 {
		return nil, fmt.Errorf("grant %s allows none of call %s's fields (%s): apply for one of them", g.ID, def.Name, strings.Join(def.Fields, ", "))
	}
	p.secret = mask.Secret(maskKey, g.ID)
	return p, nil
}

// refusal is an answer saying why the job is not answered; it has no
// receipt.
func refusal(job api.CallJob, why string) api.CallAnswer {
	return api.CallAnswer{ID: job.ID, Grant: job.Grant, Resource: job.Resource, Call: job.Call, Mode: job.Mode, Error: why}
}

// answerCall answers job from src under plan p and signs the receipt as
// provider. A refusal (bad parameters or values) comes back as an answer
// with Error set; a failure of the database too, with a message that
// quotes neither SQL nor values, and its cause, for the provider's log
// only, as the second result. now, if not nil, stands in for time.Now.
//
// When the job carries the consumer's key and keys is not nil, the
// receipt's digests are keyed with the call's key agreed with it (a
// version 2 receipt), so the hub that keeps the receipt cannot confirm a
// guess of the parameters; otherwise (a consumer's agent older than keyed
// receipts) they are plain SHA-256 (version 1).
//
// A query answers the granted fields, masked per grant; a verification
// answers only whether the subject exists and whether each value
// matches (see sameValue).
func answerCall(ctx context.Context, src connectors.Caller, p *callPlan, job api.CallJob, provider string, signer batch.Signer, keys *receipt.CallKeyer, now func() time.Time) (api.CallAnswer, error) {
	def := p.def
	var key []byte
	if keys != nil && len(job.ConsumerKey) > 0 {
		// Agreed before the database is asked: a key that cannot agree
		// one is refused at no cost to it.
		var err error
		if key, err = keys.CallKey(job.ConsumerKey, job.ID, job.Consumer, provider); err != nil {
			return refusal(job, fmt.Sprintf("the call's consumer_key cannot agree a call key (%v): the consumer's agent sends the public key of its node certificate", err)), nil
		}
	}
	params, err := def.CheckParams(job.Params)
	if err != nil {
		// Problem, not the check's own message, which may quote digits of
		// the value: the hub records this text.
		return refusal(job, fmt.Sprintf("%v: the provider's declaration refuses it: %s", api.ErrBadParam, def.Problem(job.Params))), nil
	}
	max := def.Rows()
	if job.Mode == api.ModeVerify {
		if err := def.CheckValues(job.Values); err != nil {
			return refusal(job, err.Error()), nil
		}
		for f := range job.Values {
			if _, ok := p.checks[f]; !ok {
				return refusal(job, fmt.Sprintf("%v: grant %s does not let field %s be checked (it lets: %s)", api.ErrBadParam, p.grant, f, strings.Join(p.fields, ", "))), nil
			}
		}
		max = 1
	}
	rows, err := src.Call(ctx, def, params, max)
	if err != nil {
		why := fmt.Sprintf("resource %s could not answer call %s: its database failed (the provider's qz-agent log has the cause)", job.Resource, job.Call)
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			why = fmt.Sprintf("resource %s could not answer call %s: its database did not answer before the call's deadline", job.Resource, job.Call)
		}
		return refusal(job, why), err
	}
	if len(rows) > max {
		rows = rows[:max]
	}
	ans := api.CallAnswer{ID: job.ID, Grant: job.Grant, Resource: job.Resource, Call: job.Call, Mode: job.Mode, Found: len(rows) > 0}
	if job.Mode == api.ModeVerify {
		ans.Matches = make(map[string]bool, len(job.Values))
		for f, v := range job.Values {
			ans.Matches[f] = ans.Found && sameValue(v, rows[0][p.checks[f]])
		}
	} else {
		ans.Fields = p.fields
		for _, r := range rows {
			out := make([]*string, len(p.cols))
			for i, c := range p.cols {
				v := r[c]
				if m := p.masks[i]; m != nil {
					v = m.Apply(v, p.secret)
				}
				if v != nil {
					s := string(v)
					out[i] = &s
				}
			}
			ans.Rows = append(ans.Rows, out)
		}
	}
	if now == nil {
		now = time.Now
	}
	rc := receipt.Call{
		ID: job.ID, Grant: job.Grant, Resource: job.Resource, Call: job.Call, Mode: job.Mode,
		Provider: provider, Consumer: job.Consumer, Asked: job.Asked, Answered: now(),
		Rows: len(ans.Rows), Found: ans.Found,
	}
	if key != nil {
		rc.Version, rc.ConsumerKey, rc.ProviderKey = receipt.CallKeyed, job.ConsumerKey, keys.Public()
		rc.ParamsDigest = receipt.KeyedParamsDigest(key, job.ID, job.Params, job.Values)
		rc.AnswerDigest = receipt.KeyedAnswerDigest(key, ans.Fields, ans.Rows, ans.Found, ans.Matches)
	} else {
		rc.ParamsDigest = receipt.ParamsDigest(job.ID, job.Params, job.Values)
		rc.AnswerDigest = receipt.AnswerDigest(ans.Fields, ans.Rows, ans.Found, ans.Matches)
	}
	rc, err = receipt.SignCall(rc, signer)
	if err == nil {
		ans.Receipt, err = json.Marshal(rc)
	}
	if err != nil {
		return refusal(job, "the provider could not sign the call's receipt"), fmt.Errorf("sign call receipt: %w", err)
	}
	return ans, nil
}

// sameValue reports whether a consumer's value matches the source's
// canonical text. Both are compared without surrounding white space (CHAR
// columns come padded, forms add spaces) and ASCII letters without regard
// to case, so an ID number's check character x matches X and a credit
// code's letters match in either case; every other character must be the
// same (no Unicode case folding: 全角 letters and other scripts are not
// folded into ASCII). A NULL matches nothing.
func sameValue(consumer string, source []byte) bool {
	if source == nil {
		return false
	}
	a, b := strings.TrimSpace(consumer), bytes.TrimSpace(source)
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if x|0x20 != y|0x20 || x|0x20 < 'a' || x|0x20 > 'z' {
			return false
		}
	}
	return true
}

// scrub takes a job's parameter and values out of a message meant for the
// log (values shorter than 4 bytes are left: they identify no one, and
// would garble the message).
func scrub(msg string, job api.CallJob) string {
	for _, m := range []map[string]string{job.Params, job.Values} {
		for _, v := range m {
			if v = strings.TrimSpace(v); len(v) >= 4 {
				msg = strings.ReplaceAll(msg, v, "…")
				msg = strings.ReplaceAll(msg, strings.ToUpper(v), "…")
			}
		}
	}
	return msg
}

// post gives the hub a job's answer, trying again on a network failure
// while the call may still be waiting.
func (s *callServer) post(ctx context.Context, as []api.CallAnswer, deadline time.Time) ([]api.AnswerResult, error) {
	for attempt := 0; ; attempt++ {
		var results []api.AnswerResult
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.a.call(pctx, http.MethodPost, "/v1/calls/answers", as, &results)
		cancel()
		var he *hubError
		if err == nil || errors.As(err, &he) || attempt == 2 || ctx.Err() != nil || time.Now().After(deadline) {
			return results, err
		}
		if !sleepCtx(ctx, time.Duration(100<<attempt)*time.Millisecond) {
			return nil, err
		}
	}
}

// callSigner is the node's seal key with its key ID worked out once, not
// for every receipt.
type callSigner struct {
	k  *seal.PrivateKey
	id string
}

func newCallSigner(k *seal.PrivateKey) callSigner { return callSigner{k, k.KeyID()} }

func (s callSigner) Algorithm() string                     { return s.k.Algorithm() }
func (s callSigner) KeyID() string                         { return s.id }
func (s callSigner) Sign(domain string, msg []byte) []byte { return s.k.Sign(domain, msg) }
