package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"github.com/qianzhi/qianzhi/pkg/metrics"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// caller makes query and verify calls through the hub and checks each
// answer against the provider's signed receipt before handing it on.
type caller struct {
	hub  *transport.Client
	me   string
	keys func(ctx context.Context, node, keyID string) (seal.PublicKey, error)
	// grant, when set, is the grant this node holds for a resource in a
	// mode, which the receipt must name with its provider.
	grant func(resource, mode string) (api.GrantInfo, bool)
	// agree, when set, agrees call keys from this node's key: calls then
	// carry its public key and get keyed (version 2) receipts.
	agree *receipt.CallKeyer
}

// newCaller is a caller for the node of identity id. A node key that
// cannot agree call keys leaves calls with plain receipts, which is
// logged where the running agent's caller is made.
func newCaller(hub *transport.Client, id *Identity, keys func(ctx context.Context, node, keyID string) (seal.PublicKey, error)) (*caller, error) {
	c := &caller{hub: hub, me: id.NodeID, keys: keys}
	agree, err := receipt.NewCallKeyer(id.Cert.PrivateKey)
	if err != nil {
		return c, err
	}
	c.agree = agree
	return c, nil
}

// do makes one call. A refusal by the hub is a *hubError carrying the
// hub's status and one-line reason.
func (c *caller) do(ctx context.Context, req api.CallRequest) (*api.CallAnswer, error) {
	if c.agree != nil {
		req.ConsumerKey = c.agree.Public()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.hub.URL("/v1/calls"), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.hub.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &hubError{Status: resp.StatusCode, Msg: apiError(resp)}
	}
	var ans api.CallAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&ans); err != nil {
		return nil, fmt.Errorf("read the call's answer: %w", err)
	}
	ans.CallKey = "" // only this node can know it: check sets it
	if err := c.check(ctx, req, &ans); err != nil {
		return nil, fmt.Errorf("the answer to call %s does not match its receipt, so it is not used: %w", ans.ID, err)
	}
	return &ans, nil
}

// check verifies the receipt's seal by the provider and that it covers this
// question and this answer. For a keyed receipt it agrees the call's key
// with the provider's key the receipt names, checks the digests with it,
// and hands it on in ans.CallKey.
func (c *caller) check(ctx context.Context, req api.CallRequest, ans *api.CallAnswer) error {
	rc, err := receipt.ParseCall(ans.Receipt)
	if err != nil {
		return err
	}
	pub, err := c.keys(ctx, rc.Provider, rc.SealKeyID)
	if err != nil {
		return fmt.Errorf("provider %s's seal key: %w", rc.Provider, err)
	}
	if err := rc.Verify(pub); err != nil {
		return err
	}
	// A receipt from long ago is an old answer passed off as new.
	if d := time.Since(rc.Answered); d > receiptSkew || d < -receiptSkew {
		return fmt.Errorf("the receipt says the call was answered at %s, more than %s from now", rc.Answered.Format(time.RFC3339), receiptSkew)
	}
	// What this node asked, as the provider's receipt must state it: the
	// provider and grant are those this node holds for the resource, when
	// it knows them (the running agent does; a command on its own does
	// not).
	asked := api.CallJob{ID: ans.ID, Grant: ans.Grant, Resource: req.Resource, Call: req.Call, Mode: req.Mode,
		Consumer: c.me, Params: req.Params, Values: req.Values, ConsumerKey: req.ConsumerKey}
	provider := ""
	if c.grant != nil {
		// A grant approved a moment ago may not have reached this node
		// yet; the hub, which checked it, is then taken at its word.
		if g, ok := c.grant(req.Resource, req.Mode); ok {
			asked.Grant, provider = g.ID, g.Provider
		}
	}
	// A version 1 receipt comes from a provider's agent older than keyed
	// receipts (or a call sent without this node's key); its plain
	// digests are checked as they were.
	var key []byte
	if rc.Version == receipt.CallKeyed {
		if c.agree == nil {
			return errors.New("the receipt is keyed with a call key, and this node's key cannot agree one")
		}
		// The provider is the one the receipt names (and the grant's, when
		// known, by Covers): the key agreed with another would not check.
		if key, err = c.agree.CallKey(rc.ProviderKey, ans.ID, c.me, rc.Provider); err != nil {
			return fmt.Errorf("the receipt's provider key: %w", err)
		}
	}
	if err := rc.Covers(asked, provider, ans, key); err != nil {
		return err
	}
	if key != nil {
		ans.CallKey = hex.EncodeToString(key)
	}
	return nil
}

// receiptSkew is how far a receipt's time may be from this clock: clocks
// differ by seconds (qz-agent doctor warns at 2 s), a call lasts at most
// the hub's call_timeout (5 minutes at most).
const receiptSkew = 10 * time.Minute

// consumerGrant is the active grant this node holds for a resource in a
// mode, as the hub last told it.
func (a *Agent) consumerGrant(resource, mode string) (api.GrantInfo, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for _, g := range a.grants {
		if g.Consumer == a.id.NodeID && g.Resource == resource && g.Mode == mode && g.Active && (g.Expires.IsZero() || now.Before(g.Expires)) {
			return g, true
		}
	}
	return api.GrantInfo{}, false
}

// callAPIBody is what an application posts to the local call endpoint.
type callAPIBody struct {
	Params map[string]string `json:"params"`
	Values map[string]string `json:"values,omitempty"`
}

// serveCallAPI serves the local call endpoint until ctx ends:
//
//	POST /v1/query/{resource}/{call}   {"params": {…}}                → api.CallAnswer
//	POST /v1/verify/{resource}/{call}  {"params": {…}, "values": {…}} → api.CallAnswer
//	GET  /v1/calls?grant=G&limit=N                                    → []api.CallRecord
//
// Each request needs "Authorization: Bearer TOKEN" with the token file's
// content. Refusals keep the hub's status and reason.
func (a *Agent) serveCallAPI(ctx context.Context) (addr string, stop func(), err error) {
	conf := a.config()
	if metrics.Off(conf.CallAPI.Listen) {
		return "", func() {}, nil
	}
	token, err := loadOrCreateToken(conf.callTokenFile())
	if err != nil {
		return "", nil, err
	}
	c, err := newCaller(a.hub, a.id, a.sealKey)
	if err != nil {
		a.log.Warn("the node key cannot agree call keys: this node's calls get plain receipts, and the hub's records of them could confirm guessed parameters; re-enrol the node for a P-256 key", "err", err)
	}
	c.grant = a.consumerGrant
	mux := http.NewServeMux()
	for _, mode := range []string{api.ModeQuery, api.ModeVerify} {
		mux.HandleFunc("POST /v1/"+mode+"/{resource}/{call}", func(w http.ResponseWriter, r *http.Request) {
			var b callAPIBody
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&b); err != nil {
				api.WriteError(w, http.StatusBadRequest, `the body must be JSON: {"params": {"NAME": "VALUE"}}`+map[bool]string{true: ` with "values": {"FIELD": "VALUE"}`}[mode == api.ModeVerify])
				return
			}
			req := api.CallRequest{Resource: r.PathValue("resource"), Call: r.PathValue("call"), Mode: mode, Params: b.Params, Values: b.Values}
			if t := r.URL.Query().Get("timeout"); t != "" {
				d, err := time.ParseDuration(t)
				if err != nil || d <= 0 {
					api.WriteError(w, http.StatusBadRequest, "timeout "+strconv.Quote(t)+": want a duration such as 3s")
					return
				}
				req.TimeoutMS = int(d.Milliseconds())
			}
			ans, err := c.do(r.Context(), req)
			if err != nil {
				a.callError(w, err)
				return
			}
			api.WriteJSON(w, ans)
		})
	}
	mux.HandleFunc("GET /v1/calls", func(w http.ResponseWriter, r *http.Request) {
		var recs []api.CallRecord
		if err := a.call(r.Context(), http.MethodGet, "/v1/calls?"+r.URL.RawQuery, nil, &recs); err != nil {
			a.callError(w, err)
			return
		}
		api.WriteJSON(w, recs)
	})
	auth := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), token) != 1 {
			api.WriteError(w, http.StatusUnauthorized, "missing or wrong token: send 'Authorization: Bearer' with the content of "+conf.callTokenFile())
			return
		}
		mux.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", conf.CallAPI.Listen)
	if err != nil {
		return "", nil, fmt.Errorf("call_api.listen %s: %w (another program holds the port? set call_api.listen to a free one, or off)", conf.CallAPI.Listen, err)
	}
	srv := &http.Server{Handler: auth, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go srv.Serve(ln)
	a.state.setRuntime("call_api", ln.Addr().String())
	return ln.Addr().String(), func() { srv.Close() }, nil
}

// callError answers a failed call with the hub's status and reason, or 502
// when the hub could not be asked.
func (a *Agent) callError(w http.ResponseWriter, err error) {
	var he *hubError
	if errors.As(err, &he) {
		api.WriteError(w, he.Status, he.Msg)
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	api.WriteError(w, http.StatusBadGateway, "cannot complete the call through the hub: "+err.Error())
}

// loadOrCreateToken reads the call API's token, creating a random one
// (0640, so the department's applications can be given read access through
// the service's group) when the file does not exist.
func loadOrCreateToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		t := make([]byte, 32)
		rand.Read(t)
		b = []byte(hex.EncodeToString(t) + "\n")
		err = fsutil.WriteFileAtomic(path, b, 0o640)
	}
	if err != nil {
		return nil, fmt.Errorf("call API token: %w", err)
	}
	t := bytes.TrimSpace(b)
	if len(t) < 16 {
		return nil, fmt.Errorf("call API token in %s is shorter than 16 characters: write a longer one, or delete the file for a new random one", path)
	}
	return t, nil
}

// Call makes one call from the command line, over a connection of its own.
func Call(ctx context.Context, cfg Config, req api.CallRequest) (*api.CallAnswer, error) {
	hub, id, err := hubClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	keys, done, err := pinnedKeys(cfg, hub)
	if err != nil {
		return nil, err
	}
	defer done()
	// A node key that cannot agree call keys gives plain receipts, as the
	// running agent's log says.
	c, _ := newCaller(hub, id, keys)
	return c.do(ctx, req)
}

// CallLine is a call record with what became of checking its receipt's
// seal here: "verified", or "BAD: why".
type CallLine struct {
	api.CallRecord
	Seal string `json:"seal,omitempty"`
	// CallKey (hex), for a keyed receipt agreed with this node's key, is
	// the call's key, derived again here: with it the receipt's digests
	// prove the call's parameters and answer (see receipt.KeyedParamsDigest).
	CallKey string `json:"call_key,omitempty"`
}

// CallRecords lists the hub's records of calls this node made or
// answered, each receipt's seal checked with the provider's key, and the
// call's key of each keyed receipt derived again from this node's key.
func CallRecords(ctx context.Context, cfg Config, grant string, limit int) ([]CallLine, error) {
	hub, id, err := hubClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if grant != "" {
		q.Set("grant", grant)
	}
	var recs []api.CallRecord
	if err := call(ctx, hub, http.MethodGet, "/v1/calls?"+q.Encode(), nil, &recs); err != nil {
		return nil, err
	}
	pinned, done, err := pinnedKeys(cfg, hub)
	if err != nil {
		return nil, err
	}
	defer done()
	keys := map[string]seal.PublicKey{}
	key := func(node, keyID string) (seal.PublicKey, error) {
		k, ok := keys[node+"/"+keyID]
		if !ok {
			var err error
			if k, err = pinned(ctx, node, keyID); err != nil {
				return k, err
			}
			keys[node+"/"+keyID] = k
		}
		return k, nil
	}
	// A node key that cannot agree call keys lists no call keys.
	agree, _ := receipt.NewCallKeyer(id.Cert.PrivateKey)
	out := make([]CallLine, len(recs))
	for i, r := range recs {
		out[i].CallRecord = r
		if len(r.Receipt) > 0 {
			out[i].Seal = "verified"
			if err := receipt.CheckCallSeal(r.Receipt, key); err != nil {
				out[i].Seal = "BAD: " + err.Error()
				continue
			}
			out[i].CallKey = callKeyOf(agree, id.NodeID, r.Receipt)
		}
	}
	return out, nil
}

// callKeyOf derives again the call's key of a keyed receipt this node was
// party to with its own key ("" for any other receipt).
func callKeyOf(agree *receipt.CallKeyer, me string, raw []byte) string {
	rc, err := receipt.ParseCall(raw)
	if agree == nil || err != nil || rc.Version != receipt.CallKeyed {
		return ""
	}
	var peer []byte
	switch {
	case rc.Consumer == me && bytes.Equal(rc.ConsumerKey, agree.Public()):
		peer = rc.ProviderKey
	case rc.Provider == me && bytes.Equal(rc.ProviderKey, agree.Public()):
		peer = rc.ConsumerKey
	default:
		return "" // agreed with a key of this node's from before a re-enrolment
	}
	key, err := agree.CallKey(peer, rc.ID, rc.Consumer, rc.Provider)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(key)
}

// readDashValues reads from r, one line each, the values given as "-" on
// the command line: parameters first, then values, each in name order.
func readDashValues(r io.Reader, sets ...map[string]string) error {
	var sc *bufio.Scanner
	for _, m := range sets {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if m[k] != "-" {
				continue
			}
			if sc == nil {
				sc = bufio.NewScanner(r)
			}
			if !sc.Scan() {
				return fmt.Errorf("%s=- reads its value from standard input, which ended first: give one line per value", k)
			}
			m[k] = strings.TrimRight(sc.Text(), "\r")
		}
	}
	return nil
}

// printAnswer prints a call's answer: a query's rows as a table, a
// verification's verdict per field, then the receipt that covers it.
func printAnswer(w io.Writer, ans *api.CallAnswer, asJSON bool) error {
	if asJSON {
		return printJSON(w, ans)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch {
	case ans.Mode == api.ModeVerify && !ans.Found:
		fmt.Fprintln(tw, "no such subject: nothing to compare with")
	case ans.Mode == api.ModeVerify:
		fields := slices.Sorted(maps.Keys(ans.Matches))
		for _, f := range fields {
			verdict := "no match"
			if ans.Matches[f] {
				verdict = "match"
			}
			fmt.Fprintf(tw, "%s\t%s\n", f, verdict)
		}
	case len(ans.Rows) == 0:
		fmt.Fprintln(tw, "no such subject: no rows")
	default:
		fmt.Fprintln(tw, strings.Join(ans.Fields, "\t"))
		for _, row := range ans.Rows {
			cells := make([]string, len(row))
			for i, v := range row {
				cells[i] = "NULL"
				if v != nil {
					cells[i] = *v
				}
			}
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rc, err := receipt.ParseCall(ans.Receipt); err == nil {
		fmt.Fprintf(w, "call %s under grant %s; receipt sealed by %s at %s\n", ans.ID, ans.Grant, rc.Provider, rc.Answered.Local().Format(time.DateTime))
	}
	return nil
}

// printCallRecords prints the hub's call records, newest first.
func printCallRecords(w io.Writer, recs []CallLine, asJSON bool) error {
	if asJSON {
		return printJSON(w, recs)
	}
	if len(recs) == 0 {
		fmt.Fprintln(w, "no calls")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ASKED\tID\tMODE\tCONSUMER→PROVIDER\tRESOURCE/CALL\tSTATUS\tMS\tRECEIPT\tREASON")
	for _, r := range recs {
		rc := orDash(r.Seal)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s→%s\t%s/%s\t%s\t%.1f\t%s\t%s\n", r.Asked.Local().Format(time.DateTime), r.ID, r.Mode,
			r.Consumer, orDash(r.Provider), r.Resource, r.Call, r.Status, r.TookMS, rc, r.Reason)
	}
	return tw.Flush()
}
