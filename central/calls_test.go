package central

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// callHub is a real hub (its CA, database and Handler) driven through
// HTTP requests that carry the certificate of the node making them, as
// the TLS layer would hand them to the handler.
type callHub struct {
	t     testing.TB
	cfg   string // the config file
	h     *Hub
	srv   http.Handler
	certs map[string]*x509.Certificate
	seals map[string]*seal.PrivateKey
}

const (
	goodID = "11010519491231002X" // GB 11643's own example
	badID  = "110105194912310021" // the same with a wrong check digit
)

// newCallHub makes a hub with provider gaj, whose table resource gaj.hukou
// declares the call by_id (parameter id_no, fields 姓名 and 住址), and the
// given consumer nodes.
func newCallHub(t testing.TB, consumers ...string) *callHub {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "central.yaml")
	os.WriteFile(path, []byte("state_dir: "+dir+"\nholidays_dir: "+filepath.Join(dir, "none")+"\ncall_timeout: 3s\n"), 0o644)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"init", "--config", path}, &out, &out); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go h.watchGrants(ctx)
	t.Cleanup(func() { cancel(); h.Close() })
	c := &callHub{t: t, cfg: path, h: h, srv: h.Handler(), certs: map[string]*x509.Certificate{}, seals: map[string]*seal.PrivateKey{}}
	for _, n := range append([]string{"gaj"}, consumers...) {
		c.enrol(n)
	}
	st := h.Store()
	if err := st.RegisterResource(ctx, store.Resource{ID: "gaj.hukou", Provider: "gaj", Kind: "mysql"}); err != nil {
		t.Fatal(err)
	}
	e := api.CatalogEntry{Resource: "gaj.hukou", Name: "户籍人口", Code: "GA-001", Format: "table", Department: "市公安局",
		Fields:   []api.CatalogField{{Name: "身份证号", Type: "string"}, {Name: "姓名", Type: "string"}, {Name: "住址", Type: "string"}},
		Category: api.ShareConditional, LegalBasis: "《户口登记条例》", Frequency: "daily", Modes: []string{api.ModeBatch, api.ModeQuery, api.ModeVerify},
		Calls: []api.CallDecl{{Name: "by_id", Params: []api.CallParam{{Name: "id_no", Type: api.ParamCitizenID}}, Fields: []string{"姓名", "住址"}}}}
	if _, _, err := st.SubmitCatalog(ctx, "gaj", e, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReviewCatalog(ctx, "gaj.hukou", 1, true, "", "operator"); err != nil {
		t.Fatal(err)
	}
	return c
}

// enrol adds a node with a certificate from the hub's CA and a seal key.
func (c *callHub) enrol(node string) {
	c.t.Helper()
	key, _ := pki.NewKey()
	pem, _ := pki.NewCSR(key)
	csr, _ := pki.ParseCSR(pem)
	cert, err := c.h.ca.IssueNode(csr, node, time.Hour)
	if err != nil {
		c.t.Fatal(err)
	}
	sk, _ := seal.Generate()
	pub, _ := sk.Public().MarshalText()
	ctx := context.Background()
	if err := c.h.Store().AddNode(ctx, node, node, "token-"+node, time.Now().Add(time.Hour)); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.h.Store().Enroll(ctx, "token-"+node, cert.SerialNumber.Text(16), cert.NotAfter, string(pub)); err != nil {
		c.t.Fatal(err)
	}
	c.certs[node], c.seals[node] = cert, sk
}

// grant gives a consumer a grant for gaj.hukou and returns its ID.
func (c *callHub) grant(consumer, mode string, fields []string, rate float64, quota int) string {
	c.t.Helper()
	id := "g-" + consumer
	if err := c.h.Store().AddGrant(context.Background(), store.Grant{ID: id, Resource: "gaj.hukou", Provider: "gaj", Consumer: consumer,
		Mode: mode, Fields: fields, Rate: rate, Quota: quota}); err != nil {
		c.t.Fatal(err)
	}
	return id
}

// do sends a request as node and returns the response.
func (c *callHub) do(node, method, path string, body any) *httptest.ResponseRecorder {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	r := httptest.NewRequest(method, path, rd)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.certs[node]}}
	w := httptest.NewRecorder()
	c.srv.ServeHTTP(w, r)
	return w
}

// callAsync makes a call in the background; the response comes on the channel.
func (c *callHub) callAsync(consumer string, req api.CallRequest) <-chan *httptest.ResponseRecorder {
	ch := make(chan *httptest.ResponseRecorder, 1)
	go func() { ch <- c.do(consumer, http.MethodPost, "/v1/calls", req) }()
	return ch
}

// poll is the provider's GET /v1/calls/next.
func (c *callHub) poll(provider string, wait time.Duration) []api.CallJob {
	c.t.Helper()
	w := c.do(provider, http.MethodGet, "/v1/calls/next?wait="+wait.String(), nil)
	var jobs []api.CallJob
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &jobs) != nil || jobs == nil {
		c.t.Fatalf("poll: %d %s", w.Code, w.Body)
	}
	return jobs
}

// pollOne polls until a call comes.
func (c *callHub) pollOne(provider string) api.CallJob {
	c.t.Helper()
	jobs := c.poll(provider, 5*time.Second)
	if len(jobs) != 1 {
		c.t.Fatalf("poll: %d calls, want 1: %+v", len(jobs), jobs)
	}
	return jobs[0]
}

// answer makes the provider's answer to a job with a receipt signed by key
// over what sign says (the answer itself unless a test changes it).
func answer(t testing.TB, job api.CallJob, key *seal.PrivateKey, a api.CallAnswer, sign func(*receipt.Call)) api.CallAnswer {
	t.Helper()
	rc := receipt.Call{ID: job.ID, Grant: job.Grant, Resource: job.Resource, Call: job.Call, Mode: job.Mode, Provider: "gaj", Consumer: job.Consumer,
		Asked: job.Asked, Answered: time.Now(), ParamsDigest: receipt.ParamsDigest(job.ID, job.Params, job.Values),
		AnswerDigest: receipt.AnswerDigest(a.Fields, a.Rows, a.Found, a.Matches), Rows: len(a.Rows), Found: a.Found}
	if sign != nil {
		sign(&rc)
	}
	signed, err := receipt.SignCall(rc, key)
	if err != nil {
		t.Fatal(err)
	}
	a.ID = job.ID
	a.Receipt, _ = json.Marshal(signed)
	return a
}

// record returns the hub's record of a call (the consumer's newest) and
// checks that the audit log holds its record with the action.
func (c *callHub) record(consumer, action string) api.CallRecord {
	c.t.Helper()
	ctx := context.Background()
	recs, err := c.h.Store().Calls(ctx, consumer, "", 1)
	if err != nil || len(recs) != 1 {
		c.t.Fatalf("call records of %s: %v %v", consumer, recs, err)
	}
	log, _ := c.h.Store().AuditLog(ctx)
	for _, a := range log {
		if a.Subject == recs[0].ID {
			if a.Action != action || a.Actor != consumer {
				c.t.Errorf("audit record of call %s: %s by %s, want %s by %s", a.Subject, a.Action, a.Actor, action, consumer)
			}
			if err := VerifyAudit(log); err != nil {
				c.t.Errorf("audit chain: %v", err)
			}
			return recs[0]
		}
	}
	c.t.Fatalf("no audit record of call %s", recs[0].ID)
	return recs[0]
}

func errorText(w *httptest.ResponseRecorder) string {
	var e api.Error
	json.Unmarshal(w.Body.Bytes(), &e)
	return e.Error
}

func verifyReq(id string) api.CallRequest {
	return api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeVerify, Params: map[string]string{"id_no": id}, Values: map[string]string{"姓名": "张三"}}
}

// TestCallRefusals: each call the hub refuses gets its status and a
// one-line reason, and leaves a call record and an audit record that name
// the reason but not the parameter's value.
func TestCallRefusals(t *testing.T) {
	c := newCallHub(t, "none", "batch", "revoked", "quota", "rate", "fields", "ok", "query", "queryid", "both")
	c.grant("batch", api.ModeBatch, nil, 0, 0)
	c.grant("revoked", api.ModeVerify, nil, 0, 0)
	if err := c.h.Store().RevokeGrant(context.Background(), "g-revoked", false); err != nil {
		t.Fatal(err)
	}
	c.grant("both", api.ModeVerify, nil, 0, 0)
	if err := c.h.Store().RevokeGrant(context.Background(), "g-both", false); err != nil {
		t.Fatal(err)
	}
	if err := c.h.Store().AddGrant(context.Background(), store.Grant{ID: "g-both-batch", Resource: "gaj.hukou", Provider: "gaj", Consumer: "both", Mode: api.ModeBatch}); err != nil {
		t.Fatal(err)
	}
	c.grant("quota", api.ModeVerify, nil, 0, 2)
	c.grant("rate", api.ModeVerify, nil, 0.01, 0)
	c.grant("fields", api.ModeVerify, []string{"住址"}, 0, 0)
	c.grant("ok", api.ModeVerify, nil, 0, 0)
	c.grant("query", api.ModeQuery, nil, 0, 0)
	c.grant("queryid", api.ModeQuery, []string{"身份证号"}, 0, 0)

	for _, tc := range []struct {
		name     string
		consumer string
		req      api.CallRequest
		before   int // calls made first, each passing the checks
		code     int
		msg      string
		reason   string // in the record, when not the message
	}{
		{"no grant", "none", verifyReq(goodID), 0, 403, "node none has no grant for gaj.hukou in mode verify: apply with 'qz-agent apply gaj.hukou --mode verify …' and wait for approval", ""},
		{"wrong mode", "batch", verifyReq(goodID), 0, 403, "grant g-batch for gaj.hukou is for mode batch, not verify: apply with 'qz-agent apply gaj.hukou --mode verify …'", ""},
		{"revoked grant", "revoked", verifyReq(goodID), 0, 403, "grant g-revoked for gaj.hukou in mode verify was revoked", ""},
		{"revoked beside a batch grant", "both", verifyReq(goodID), 0, 403, "grant g-both for gaj.hukou in mode verify was revoked", ""},
		{"over quota", "quota", verifyReq(goodID), 2, 429, "grant g-quota's daily quota of 2 calls is used up; it renews at 00:00 CST", ""},
		{"over rate", "rate", verifyReq(goodID), 1, 429, "grant g-rate allows 0.01 calls a second; slow down", ""},
		{"invalid ID number", "ok", verifyReq(badID), 0, 400, "id_no: invalid identity number: the check character is 1", "parameter id_no is not a valid citizen_id"},
		{"field not granted", "fields", verifyReq(goodID), 0, 403, "grant g-fields does not cover field 姓名 (it covers: 住址)", ""},
		{"unknown resource", "ok", api.CallRequest{Resource: "gaj.none", Call: "by_id", Mode: api.ModeVerify}, 0, 404, "resource gaj.none is not in the catalog", ""},
		{"unknown call", "ok", api.CallRequest{Resource: "gaj.hukou", Call: "by_name", Mode: api.ModeVerify}, 0, 404, "resource gaj.hukou declares no call by_name (it declares: by_id)", ""},
		{"batch mode", "ok", api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeBatch}, 0, 400, `mode "batch": a call is in mode query or verify`, ""},
		{"query with values", "query", api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeQuery, Params: map[string]string{"id_no": goodID}, Values: map[string]string{"姓名": "x"}}, 0, 400, "a query takes no values", ""},
		{"query of fields not granted", "queryid", api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeQuery, Params: map[string]string{"id_no": goodID}}, 0, 403, "grant g-queryid covers none of the fields call by_id answers (姓名, 住址)", ""},
		{"missing parameter", "ok", api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeVerify, Values: map[string]string{"姓名": "x"}}, 0, 400, "id_no is required (citizen_id)", "parameter id_no (citizen_id) is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.poll("gaj", 0) // the provider is connected: calls that pass the checks are forwarded
			for i := range tc.before {
				req := tc.req
				req.TimeoutMS = 1
				if w := c.do(tc.consumer, http.MethodPost, "/v1/calls", req); w.Code != http.StatusGatewayTimeout {
					t.Fatalf("call %d before: %d %s, want it forwarded (and timed out)", i+1, w.Code, w.Body)
				}
			}
			w := c.do(tc.consumer, http.MethodPost, "/v1/calls", tc.req)
			if w.Code != tc.code || !strings.Contains(errorText(w), tc.msg) {
				t.Fatalf("%d %q, want %d %q", w.Code, errorText(w), tc.code, tc.msg)
			}
			rec := c.record(tc.consumer, "call.refused")
			want := tc.reason
			if want == "" {
				want = errorText(w)
			}
			if rec.Status != api.CallRefused || rec.Reason != want || rec.Receipt != nil {
				t.Errorf("record: %+v, want refused with reason %q", rec, want)
			}
			if strings.Contains(rec.Reason, badID[6:14]) {
				t.Errorf("the record quotes the ID number: %q", rec.Reason)
			}
		})
	}
}

// TestCallRevokedAtOnce: the hub keeps grants in memory, yet a revocation
// made in the database (as the admin CLI makes it) refuses the next calls
// once the hub's grant watch notices.
func TestCallRevokedAtOnce(t *testing.T) {
	c := newCallHub(t, "mzj")
	c.grant("mzj", api.ModeVerify, nil, 1000, 0)
	c.poll("gaj", 0)
	req := verifyReq(goodID)
	req.TimeoutMS = 1
	if w := c.do("mzj", http.MethodPost, "/v1/calls", req); w.Code != http.StatusGatewayTimeout {
		t.Fatalf("call under the grant: %d %s", w.Code, w.Body)
	}
	if err := c.h.Store().RevokeGrant(context.Background(), "g-mzj", false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		w := c.do("mzj", http.MethodPost, "/v1/calls", req)
		if w.Code == http.StatusForbidden && strings.Contains(errorText(w), "was revoked") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls still pass 2 s after the revocation: %d %s", w.Code, w.Body)
		}
		c.poll("gaj", 0)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCallAnswered: a verify and a query call go to the provider's poll,
// come back with a correctly signed receipt, and reach the consumer; the
// records hold the receipts and the listing shows them to both sides only.
func TestCallAnswered(t *testing.T) {
	c := newCallHub(t, "mzj", "wjw", "other")
	c.grant("mzj", api.ModeVerify, nil, 0, 0)
	c.grant("wjw", api.ModeQuery, []string{"姓名"}, 0, 0)
	if err := c.h.Store().AddGrant(context.Background(), store.Grant{ID: "g-mzj-batch", Resource: "gaj.hukou", Provider: "gaj", Consumer: "mzj", Mode: api.ModeBatch}); err != nil {
		t.Fatal(err)
	}
	c.poll("gaj", 0)

	got := c.callAsync("mzj", verifyReq("11010519491231002x"))
	job := c.pollOne("gaj")
	if job.Consumer != "mzj" || job.Grant != "g-mzj" || job.Mode != api.ModeVerify || job.Params["id_no"] != "11010519491231002x" || job.Values["姓名"] != "张三" ||
		!job.Deadline.After(job.Asked) || job.Deadline.Sub(job.Asked) > 3*time.Second {
		t.Fatalf("job: %+v (the ID number as the consumer sent it, so its digest is one the consumer can compute; deadline within the hub's 3s)", job)
	}
	a := answer(t, job, c.seals["gaj"], api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}, nil)
	if w := c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", a); w.Code != http.StatusNoContent {
		t.Fatalf("answer: %d %s", w.Code, w.Body)
	}
	w := <-got
	var ans api.CallAnswer
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &ans) != nil {
		t.Fatalf("call: %d %s", w.Code, w.Body)
	}
	if ans.ID != job.ID || ans.Grant != "g-mzj" || ans.Resource != "gaj.hukou" || ans.Call != "by_id" || ans.Mode != api.ModeVerify || !ans.Found || !ans.Matches["姓名"] {
		t.Errorf("answer: %+v", ans)
	}
	rec := c.record("mzj", "call.verify")
	if rec.Status != api.CallAnswered || rec.ID != job.ID || rec.Provider != "gaj" || !bytes.Equal(rec.Receipt, a.Receipt) {
		t.Errorf("record: %+v", rec)
	}
	if w := c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", a); w.Code != http.StatusNotFound {
		t.Errorf("a second answer: %d %s", w.Code, w.Body)
	}

	name := "王五"
	got = c.callAsync("wjw", api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeQuery, Params: map[string]string{"id_no": goodID}})
	job = c.pollOne("gaj")
	a = answer(t, job, c.seals["gaj"], api.CallAnswer{Fields: []string{"姓名"}, Rows: [][]*string{{&name}}, Found: true}, nil)
	if w := c.do("wjw", http.MethodPost, "/v1/calls/"+job.ID+"/answer", a); w.Code != http.StatusForbidden {
		t.Errorf("the consumer answers its own call: %d %s", w.Code, w.Body)
	}
	c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", a)
	if w := <-got; w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &ans) != nil || len(ans.Rows) != 1 || *ans.Rows[0][0] != name {
		t.Fatalf("query: %d %s", w.Code, w.Body)
	}
	c.record("wjw", "call.query")

	list := func(node, query string) []api.CallRecord {
		w := c.do(node, http.MethodGet, "/v1/calls"+query, nil)
		var recs []api.CallRecord
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &recs) != nil || recs == nil {
			t.Fatalf("list calls as %s: %d %s", node, w.Code, w.Body)
		}
		return recs
	}
	if recs := list("gaj", ""); len(recs) != 2 || recs[0].Consumer != "wjw" || recs[1].Consumer != "mzj" {
		t.Errorf("the provider's list, newest first: %+v", recs)
	}
	if recs := list("mzj", "?grant=g-mzj&limit=5"); len(recs) != 1 || recs[0].ID != rec.ID {
		t.Errorf("the consumer's list of its grant: %+v", recs)
	}
	if recs := list("other", ""); len(recs) != 0 {
		t.Errorf("another node sees %d calls", len(recs))
	}
	if w := c.do("mzj", http.MethodGet, "/v1/calls?limit=5000", nil); w.Code != http.StatusBadRequest {
		t.Errorf("limit 5000: %d", w.Code)
	}
}

// TestCallBadAnswer: an answer whose receipt does not hold is refused to
// the provider (422) and ends the call as failed (502); so does the
// provider's own error.
func TestCallBadAnswer(t *testing.T) {
	c := newCallHub(t, "mzj")
	c.grant("mzj", api.ModeVerify, nil, 1000, 0)
	stranger, _ := seal.Generate()
	good := api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}
	name := "张三"
	for _, tc := range []struct {
		name string
		make func(api.CallJob) api.CallAnswer
		msg  string
	}{
		{"another answer than signed", func(j api.CallJob) api.CallAnswer {
			a := answer(t, j, c.seals["gaj"], good, nil)
			a.Matches["姓名"] = false
			return a
		}, "the receipt covers another answer"},
		{"other parameters", func(j api.CallJob) api.CallAnswer {
			return answer(t, j, c.seals["gaj"], good, func(rc *receipt.Call) {
				rc.ParamsDigest = receipt.ParamsDigest(j.ID, map[string]string{"id_no": "x"}, nil)
			})
		}, "other parameters"},
		{"another call's receipt", func(j api.CallJob) api.CallAnswer {
			return answer(t, j, c.seals["gaj"], good, func(rc *receipt.Call) { rc.ID = "0123" })
		}, "the receipt is for call 0123"},
		{"not the provider's key", func(j api.CallJob) api.CallAnswer { return answer(t, j, stranger, good, nil) }, "is not a seal key of node gaj"},
		{"no receipt", func(j api.CallJob) api.CallAnswer { return good }, "the answer has no receipt"},
		{"a verification with rows", func(j api.CallJob) api.CallAnswer {
			return answer(t, j, c.seals["gaj"], api.CallAnswer{Fields: []string{"姓名"}, Rows: [][]*string{{&name}}, Found: true}, nil)
		}, "carries fields or rows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.poll("gaj", 0)
			got := c.callAsync("mzj", verifyReq(goodID))
			job := c.pollOne("gaj")
			if w := c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", tc.make(job)); w.Code != http.StatusUnprocessableEntity || !strings.Contains(errorText(w), tc.msg) {
				t.Errorf("the provider is told: %d %q, want 422 %q", w.Code, errorText(w), tc.msg)
			}
			w := <-got
			if w.Code != http.StatusBadGateway || !strings.Contains(errorText(w), "provider gaj sent an invalid answer: ") || !strings.Contains(errorText(w), tc.msg) {
				t.Fatalf("consumer: %d %q", w.Code, errorText(w))
			}
			if rec := c.record("mzj", "call.failed"); rec.Status != api.CallFailed || rec.Receipt != nil || !strings.Contains(rec.Reason, tc.msg) {
				t.Errorf("record: %+v", rec)
			}
		})
	}
	t.Run("the provider's error", func(t *testing.T) {
		c.poll("gaj", 0)
		got := c.callAsync("mzj", verifyReq(goodID))
		job := c.pollOne("gaj")
		c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", api.CallAnswer{Error: "database down while looking up " + goodID})
		w := <-got
		if w.Code != http.StatusBadGateway || errorText(w) != "provider gaj could not answer: database down while looking up "+goodID {
			t.Fatalf("consumer: %d %q", w.Code, errorText(w))
		}
		if rec := c.record("mzj", "call.failed"); rec.Reason != "provider gaj could not answer: database down while looking up [value]" {
			t.Errorf("recorded reason %q: the value must not be kept", rec.Reason)
		}
	})
}

// TestCallProviderAway: with no poll from the provider the call fails at
// once (503, recorded as refused and not counted against the quota); with a poll that takes the call and never answers, it times
// out (504) after the call's timeout, and a late answer finds nothing.
func TestCallProviderAway(t *testing.T) {
	c := newCallHub(t, "mzj")
	c.grant("mzj", api.ModeVerify, nil, 1000, 0)
	start := time.Now()
	w := c.do("mzj", http.MethodPost, "/v1/calls", verifyReq(goodID))
	if w.Code != http.StatusServiceUnavailable || !strings.HasPrefix(errorText(w), "provider gaj is not connected (") ||
		!strings.HasSuffix(errorText(w), "): its agent is offline, or busy with as many calls as it takes at once; try again later") {
		t.Fatalf("no poll: %d %q", w.Code, errorText(w))
	}
	if took := time.Since(start); took >= c.h.cfg.CallTimeout {
		t.Errorf("no poll: the call waited %s, its whole timeout", took)
	}
	if rec := c.record("mzj", "call.refused"); rec.Status != api.CallRefused || !strings.Contains(rec.Reason, "not connected") {
		t.Errorf("record: %+v", rec)
	}
	// It never reached the provider, so it does not count against the quota.
	if n, err := c.h.Store().CallCount(context.Background(), "g-mzj", time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("%d calls counted against the quota (%v), want 0", n, err)
	}

	c.poll("gaj", 0)
	req := verifyReq(goodID)
	req.TimeoutMS = 300
	got := c.callAsync("mzj", req)
	job := c.pollOne("gaj")
	if d := job.Deadline.Sub(job.Asked); d != 300*time.Millisecond {
		t.Errorf("deadline %s after the call, want the 300ms it asked for", d)
	}
	w = <-got
	if w.Code != http.StatusGatewayTimeout || errorText(w) != "provider gaj did not answer within 300ms: its agent is offline or busy; try again later" {
		t.Fatalf("no answer: %d %q", w.Code, errorText(w))
	}
	if rec := c.record("mzj", "call.timeout"); rec.Status != api.CallTimeout || rec.TookMS < 300 {
		t.Errorf("record: %+v", rec)
	}
	late := answer(t, job, c.seals["gaj"], api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}, nil)
	if w := c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", late); w.Code != http.StatusNotFound || !strings.Contains(errorText(w), "unknown or already timed out") {
		t.Errorf("late answer: %d %s", w.Code, w.Body)
	}
}

// TestCallPolls: several polls of one provider share its calls, each call
// going to one poll only; a poll with nothing to hand out answers [] when
// its wait ends.
func TestCallPolls(t *testing.T) {
	c := newCallHub(t, "mzj")
	c.grant("mzj", api.ModeVerify, nil, 1000, 0)
	if jobs := c.poll("gaj", 10*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("an empty poll: %+v", jobs)
	}
	const calls = 20
	var done []<-chan *httptest.ResponseRecorder
	for range calls {
		req := verifyReq(goodID)
		req.TimeoutMS = 2000
		done = append(done, c.callAsync("mzj", req))
	}
	seen := map[string]int{}
	polls := make(chan []api.CallJob)
	for range 3 {
		go func() {
			w := c.do("gaj", http.MethodGet, "/v1/calls/next?wait=300ms", nil)
			var jobs []api.CallJob
			json.Unmarshal(w.Body.Bytes(), &jobs)
			polls <- jobs
		}()
	}
	for deadline := time.Now().Add(3 * time.Second); len(seen) < calls && time.Now().Before(deadline); {
		for _, j := range <-polls {
			seen[j.ID]++
			a := answer(t, j, c.seals["gaj"], api.CallAnswer{Found: false}, nil)
			go c.do("gaj", http.MethodPost, "/v1/calls/"+j.ID+"/answer", a)
		}
		go func() {
			w := c.do("gaj", http.MethodGet, "/v1/calls/next?wait=300ms", nil)
			var jobs []api.CallJob
			json.Unmarshal(w.Body.Bytes(), &jobs)
			polls <- jobs
		}()
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("call %s handed out %d times", id, n)
		}
	}
	for i, ch := range done {
		if w := <-ch; w.Code != http.StatusOK {
			t.Errorf("call %d: %d %s", i, w.Code, w.Body)
		}
	}
	if len(seen) != calls {
		t.Errorf("%d of %d calls reached the provider", len(seen), calls)
	}
	if n, _ := c.h.Store().CallCount(context.Background(), "g-mzj", time.Now().Add(-time.Hour)); n != calls {
		t.Errorf("%d calls counted, want %d", n, calls)
	}

}

// TestCallLimitsShown: agents see each query or verify grant's rate and
// quota, the grant's own or the hub's defaults; batch grants carry none.
func TestCallLimitsShown(t *testing.T) {
	c := newCallHub(t, "mzj", "wjw", "sjj")
	c.grant("mzj", api.ModeVerify, nil, 2.5, 50)
	c.grant("wjw", api.ModeQuery, nil, 0, 0)
	c.grant("sjj", api.ModeBatch, nil, 0, 0)
	for node, want := range map[string]string{"mzj": "2.5 50", "wjw": "20 10000", "sjj": "0 0"} {
		w := c.do(node, http.MethodGet, "/v1/grants", nil)
		var gs []api.GrantInfo
		if err := json.Unmarshal(w.Body.Bytes(), &gs); err != nil || len(gs) != 1 {
			t.Fatalf("grants of %s: %s", node, w.Body)
		}
		if got := fmt.Sprintf("%g %d", gs[0].Rate, gs[0].Quota); got != want {
			t.Errorf("grant of %s: rate and quota %s, want %s", node, got, want)
		}
	}
}

// TestCallsCommand: qz-central grant add makes query and verify grants
// with limits, and qz-central calls lists the records, as a table or JSON.
func TestCallsCommand(t *testing.T) {
	c := newCallHub(t, "mzj", "wjw")
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Run(context.Background(), append(args, "--config", c.cfg), &out, &out)
		return out.String(), err
	}
	// The operator's grant is for unconditional resources (a conditional
	// one's provider decides): make gaj.hukou one.
	ctx, st := context.Background(), c.h.Store()
	vs, err := st.CatalogVersions(ctx, "gaj.hukou")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run("grant", "add", "--resource", "gaj.hukou", "--consumer", "mzj", "--mode", "verify"); err == nil || !strings.Contains(err.Error(), "is conditional") {
		t.Fatalf("grant add on a conditional resource: %v", err)
	}
	e := vs[0].Entry
	e.Category = api.ShareUnconditional
	if _, _, err := st.SubmitCatalog(ctx, "gaj", e, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReviewCatalog(ctx, "gaj.hukou", 2, true, "", "operator"); err != nil {
		t.Fatal(err)
	}
	out, err := run("grant", "add", "--resource", "gaj.hukou", "--consumer", "mzj", "--mode", "verify", "--rate", "5", "--quota", "100")
	if err != nil {
		t.Fatalf("grant add: %v %s", err, out)
	}
	g, err := c.h.Store().Grant(context.Background(), strings.TrimSpace(out))
	if err != nil || g.Mode != api.ModeVerify || g.Rate != 5 || g.Quota != 100 {
		t.Fatalf("grant made: %+v %v", g, err)
	}
	for _, bad := range [][]string{{"--rate", "5"}, {"--mode", "verify", "--quota", "-1"}, {"--mode", "lookup"}} {
		if out, err := run(append([]string{"grant", "add", "--resource", "gaj.hukou", "--consumer", "wjw"}, bad...)...); err == nil {
			t.Errorf("grant add %v: accepted: %s", bad, out)
		}
	}
	c.do("wjw", http.MethodPost, "/v1/calls", verifyReq(goodID))
	c.do("mzj", http.MethodPost, "/v1/calls", verifyReq(badID))
	out, err = run("calls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 3 || !strings.Contains(lines[0], "CONSUMER → PROVIDER") ||
		!strings.Contains(lines[1], "mzj → gaj") || !strings.Contains(lines[1], "parameter id_no is not a valid citizen_id") ||
		!strings.Contains(lines[2], "wjw → gaj") || !strings.Contains(lines[2], "refused") {
		t.Fatalf("calls: %v\n%s", err, out)
	}
	out, err = run("calls", "--node", "wjw", "--json")
	var recs []api.CallRecord
	if err != nil || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || recs[0].Consumer != "wjw" {
		t.Fatalf("calls --node wjw --json: %v %s", err, out)
	}
	if out, _ := run("calls", "--grant", g.ID); strings.Count(out, "\n") != 2 {
		t.Errorf("calls --grant %s:\n%s", g.ID, out)
	}
}

// BenchmarkVerifyCalls drives verify calls through the whole hub path
// (the node check, the call's checks, the queue, a provider's polls and
// signed answers, the receipt check and the grouped records) with 64
// consumers at once; calls/s is the throughput. The simulated provider
// signs its receipts on the same cores.
func BenchmarkVerifyCalls(b *testing.B) {
	c := newCallHub(b, "mzj")
	c.grant("mzj", api.ModeVerify, nil, 1e9, 1<<30)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 4 {
		go func() {
			for ctx.Err() == nil {
				w := c.do("gaj", http.MethodGet, "/v1/calls/next?wait=1s", nil)
				var jobs []api.CallJob
				json.Unmarshal(w.Body.Bytes(), &jobs)
				for _, j := range jobs {
					a := answer(b, j, c.seals["gaj"], api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}, nil)
					c.do("gaj", http.MethodPost, "/v1/calls/"+j.ID+"/answer", a)
				}
			}
		}()
	}
	c.poll("gaj", 0)
	body, _ := json.Marshal(verifyReq(goodID))
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if w := c.do("mzj", http.MethodPost, "/v1/calls", body); w.Code != http.StatusOK {
				b.Errorf("call: %d %s", w.Code, w.Body)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
}

// TestCallModeWithdrawn: once the approved catalog entry stops offering a
// mode, calls in it are refused even under a grant that is still active.
func TestCallModeWithdrawn(t *testing.T) {
	c := newCallHub(t, "mzj")
	c.grant("mzj", api.ModeQuery, nil, 1000, 0)
	ctx := context.Background()
	vs, err := c.h.Store().CatalogVersions(ctx, "gaj.hukou")
	if err != nil || len(vs) == 0 {
		t.Fatal(vs, err)
	}
	e := vs[len(vs)-1].Entry
	e.Modes = []string{api.ModeBatch, api.ModeVerify}
	if _, _, err := c.h.Store().SubmitCatalog(ctx, "gaj", e, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.h.Store().ReviewCatalog(ctx, "gaj.hukou", 2, true, "", "operator"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the hub reads the catalog again at most once a second
	req := api.CallRequest{Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeQuery, Params: map[string]string{"id_no": goodID}}
	if w := c.do("mzj", http.MethodPost, "/v1/calls", req); w.Code != http.StatusForbidden || !strings.Contains(errorText(w), "no longer offered in mode query") {
		t.Fatalf("a call in a withdrawn mode: %d %q", w.Code, errorText(w))
	}
}

// TestCallPollMax: a provider's poll takes no more calls than it asks for,
// the rest wait for its next poll, and each job says how long it has left.
func TestCallPollMax(t *testing.T) {
	c := newCallHub(t, "mzj")
	c.grant("mzj", api.ModeVerify, nil, 1000, 0)
	c.poll("gaj", 0) // the provider is connected
	var got []<-chan *httptest.ResponseRecorder
	for range 3 {
		got = append(got, c.callAsync("mzj", verifyReq(goodID)))
	}
	var jobs []api.CallJob
	waitUntil := time.Now().Add(5 * time.Second)
	for len(jobs) < 3 && time.Now().Before(waitUntil) {
		w := c.do("gaj", http.MethodGet, "/v1/calls/next?wait=1s&max=2", nil)
		var js []api.CallJob
		if err := json.Unmarshal(w.Body.Bytes(), &js); err != nil {
			t.Fatal(err)
		}
		if len(js) > 2 {
			t.Fatalf("a poll asking for 2 calls took %d", len(js))
		}
		jobs = append(jobs, js...)
	}
	if len(jobs) != 3 {
		t.Fatalf("%d calls handed out, want 3", len(jobs))
	}
	for _, j := range jobs {
		if j.TimeoutMS <= 0 || j.TimeoutMS > 3000 {
			t.Errorf("job %s has %d ms left; the hub's call_timeout is 3s", j.ID, j.TimeoutMS)
		}
		a := answer(t, j, c.seals["gaj"], api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}, nil)
		c.do("gaj", http.MethodPost, "/v1/calls/"+j.ID+"/answer", a)
	}
	for _, g := range got {
		if w := <-g; w.Code != http.StatusOK {
			t.Errorf("call: %d %s", w.Code, w.Body)
		}
	}
}

// TestClip: a clipped name never splits a character, so the audit
// record that holds it stays valid UTF-8 (and its export keeps its hash).
func TestClip(t *testing.T) {
	s := strings.Repeat("户", 30) // 90 bytes
	c := clip(s)
	if !utf8.ValidString(c) || !strings.HasSuffix(c, "…") || len(c) > 64+len("…") {
		t.Errorf("clip(%q) = %q", s, c)
	}
	if clip("gaj.huji") != "gaj.huji" {
		t.Error("a short name was changed")
	}
}

// TestCallRefusalFlood: a node sending calls that cannot succeed in a loop
// gets every refusal, but past a burst they are summed up in one audit
// record instead of one each.
func TestCallRefusalFlood(t *testing.T) {
	c := newCallHub(t, "mzj")
	const n = auditBurst + 100
	for range n {
		if w := c.do("mzj", http.MethodPost, "/v1/calls", verifyReq(goodID)); w.Code != http.StatusForbidden {
			t.Fatalf("a call without a grant: %d %s", w.Code, w.Body)
		}
	}
	ctx := context.Background()
	recs, err := c.h.Store().Calls(ctx, "mzj", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) >= n || len(recs) < auditBurst {
		t.Errorf("%d of %d refusals recorded one by one, want about %d", len(recs), n, auditBurst)
	}
	c.h.flushNodeAudits(ctx)
	log, err := c.h.Store().AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d more refused calls", n-len(recs))
	if !slices.ContainsFunc(log, func(r store.AuditRecord) bool {
		return r.Action == "call.refused" && r.Subject == "summary" && strings.HasPrefix(r.Detail, want) && strings.Contains(r.Detail, "has no grant")
	}) {
		t.Errorf("no summary %q in the audit log", want)
	}
}

// TestCallKeyed: a consumer's key reaches the provider with the call only
// when it is the key of the certificate the consumer connected with; the
// hub takes a keyed receipt, which it cannot check the digests of, after
// checking what it can (the call, the nodes, the consumer's key, the
// count of rows and whether the subject was found); and its record holds
// no plain digest of the parameters.
func TestCallKeyed(t *testing.T) {
	c := newCallHub(t, "mzj", "rsj")
	c.grant("mzj", api.ModeVerify, nil, 1000, 0)
	pk, _ := pki.NewKey()
	prov, err := receipt.NewCallKeyer(pk)
	if err != nil {
		t.Fatal(err)
	}
	keyed := func(j api.CallJob, a api.CallAnswer, change func(*receipt.Call)) api.CallAnswer {
		key, err := prov.CallKey(j.ConsumerKey, j.ID, j.Consumer, "gaj")
		if err != nil {
			t.Fatal(err)
		}
		return answer(t, j, c.seals["gaj"], a, func(rc *receipt.Call) {
			rc.Version, rc.ConsumerKey, rc.ProviderKey = receipt.CallKeyed, j.ConsumerKey, prov.Public()
			rc.ParamsDigest = receipt.KeyedParamsDigest(key, j.ID, j.Params, j.Values)
			rc.AnswerDigest = receipt.KeyedAnswerDigest(key, a.Fields, a.Rows, a.Found, a.Matches)
			if change != nil {
				change(rc)
			}
		})
	}
	req := verifyReq(goodID)
	req.ConsumerKey = c.certs["rsj"].RawSubjectPublicKeyInfo
	c.poll("gaj", 0)
	if w := c.do("mzj", http.MethodPost, "/v1/calls", req); w.Code != http.StatusBadRequest || !strings.Contains(errorText(w), "consumer_key is not the public key of the certificate node mzj connected with") {
		t.Errorf("another node's key: %d %q", w.Code, errorText(w))
	}

	req.ConsumerKey = c.certs["mzj"].RawSubjectPublicKeyInfo
	good := api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}
	for _, tc := range []struct {
		name   string
		change func(*receipt.Call)
		msg    string // "" when the hub takes it
	}{
		{"rows", func(rc *receipt.Call) { rc.Rows = 1 }, "the receipt says 1 rows"},
		{"not found", func(rc *receipt.Call) { rc.Found = false }, "found false"},
		{"keyed with another consumer key", func(rc *receipt.Call) { rc.ConsumerKey = prov.Public() }, "another consumer key"},
		{"another call", func(rc *receipt.Call) { rc.ID = "0123" }, "the receipt is for call 0123"},
		{"good", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.poll("gaj", 0)
			got := c.callAsync("mzj", req)
			job := c.pollOne("gaj")
			if !bytes.Equal(job.ConsumerKey, req.ConsumerKey) {
				t.Fatalf("the job carries consumer key %x, want the consumer's", job.ConsumerKey)
			}
			a := keyed(job, good, tc.change)
			w := c.do("gaj", http.MethodPost, "/v1/calls/"+job.ID+"/answer", a)
			res := <-got
			if tc.msg != "" {
				if w.Code != http.StatusUnprocessableEntity || !strings.Contains(errorText(w), tc.msg) || res.Code != http.StatusBadGateway {
					t.Errorf("the provider is told %d %q, the consumer %d: want 422 %q and 502", w.Code, errorText(w), res.Code, tc.msg)
				}
				return
			}
			if w.Code != http.StatusNoContent || res.Code != http.StatusOK {
				t.Fatalf("answer: %d %s; call: %d %s", w.Code, w.Body, res.Code, res.Body)
			}
			rec := c.record("mzj", "call.verify")
			if !bytes.Equal(rec.Receipt, a.Receipt) {
				t.Errorf("record %+v", rec)
			}
			plain := receipt.ParamsDigest(job.ID, req.Params, req.Values)
			log, _ := c.h.Store().AuditLog(context.Background())
			all, _ := json.Marshal([]any{rec, log})
			if bytes.Contains(all, []byte(plain)) {
				t.Error("the hub's records hold the plain digest of the parameters")
			}
		})
	}
}
