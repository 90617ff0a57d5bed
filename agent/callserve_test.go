package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/mask"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// fakeCaller answers every call with rows, or fails with err, and notes
// what it was asked.
type fakeCaller struct {
	rows   [][][]byte
	err    error
	calls  int
	max    int
	params map[string]string
}

func (f *fakeCaller) Call(_ context.Context, _ *connectors.CallDef, params map[string]string, max int) ([][][]byte, error) {
	f.calls++
	f.max, f.params = max, params
	if f.err != nil {
		return nil, f.err
	}
	return f.rows[:min(max, len(f.rows))], nil
}

const (
	testID       = "11010519491231002X"
	testProvider = "gaj"
	testConsumer = "mzj"
)

var byID = &connectors.CallDef{CallDecl: api.CallDecl{Name: "by_id", MaxRows: 3,
	Params: []api.CallParam{{Name: "id_no", Type: api.ParamCitizenID}},
	Fields: []string{"id_no", "name", "address", "birth", "income"}},
	Query: "SELECT id_no, name, address, birth, income FROM household WHERE id_no = :id_no"}

// zhang is a row of byID's fields, with no income (NULL).
func zhang() [][]byte {
	return [][]byte{[]byte(testID), []byte("张三丰"), []byte("北京市朝阳区建国路88号"), []byte("1949-12-31"), nil}
}

func testGrant(mode string) api.GrantInfo {
	return api.GrantInfo{ID: "g-1", Resource: "gaj.huji", Provider: testProvider, Consumer: testConsumer, Mode: mode, Active: true,
		Fields: []string{"id_no", "name", "address", "birth", "income"}}
}

func testJob(mode string) api.CallJob {
	return api.CallJob{ID: "c-1", Grant: "g-1", Resource: "gaj.huji", Call: "by_id", Mode: mode, Consumer: testConsumer,
		Params: map[string]string{"id_no": strings.ToLower(testID)}, Asked: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Deadline: time.Now().Add(time.Minute)}
}

// checkReceipt verifies an answer's receipt as the consumer does: sealed
// by the provider's key, for this job, over these parameters and this
// answer.
func checkCallReceipt(t *testing.T, key *seal.PrivateKey, job api.CallJob, ans api.CallAnswer) receipt.Call {
	t.Helper()
	// What the consumer sees is the answer after JSON.
	raw, err := json.Marshal(ans)
	if err != nil {
		t.Fatal(err)
	}
	var got api.CallAnswer
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	rc, err := receipt.ParseCall(got.Receipt)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Verify(key.Public()); err != nil {
		t.Fatalf("receipt does not verify: %v", err)
	}
	switch {
	case rc.ID != job.ID || rc.Grant != job.Grant || rc.Resource != job.Resource || rc.Call != job.Call || rc.Mode != job.Mode:
		t.Errorf("receipt is for %+v", rc)
	case rc.Provider != testProvider || rc.Consumer != testConsumer || !rc.Asked.Equal(job.Asked) || rc.Answered.IsZero():
		t.Errorf("receipt names provider %s, consumer %s, asked %s, answered %s", rc.Provider, rc.Consumer, rc.Asked, rc.Answered)
	case rc.ParamsDigest != receipt.ParamsDigest(job.ID, job.Params, job.Values):
		t.Errorf("params digest does not cover the parameters as the consumer sent them")
	case rc.AnswerDigest != receipt.AnswerDigest(got.Fields, got.Rows, got.Found, got.Matches):
		t.Errorf("answer digest does not cover the answer")
	case rc.Rows != len(got.Rows) || rc.Found != got.Found:
		t.Errorf("receipt says %d rows, found %v", rc.Rows, rc.Found)
	}
	return rc
}

func strs(row []*string) []string {
	var out []string
	for _, v := range row {
		if v == nil {
			out = append(out, "<nil>")
		} else {
			out = append(out, *v)
		}
	}
	return out
}

// TestAnswerQuery: a query answers the fields the grant allows, in the
// call's order, masked per grant, NULL as nil, at most the call's rows,
// with a receipt that verifies and covers the parameters as sent (the x
// in lower case) and the answer.
func TestAnswerQuery(t *testing.T) {
	key, _ := seal.Generate()
	maskKey := []byte("0123456789abcdef0123456789abcdef")
	g := testGrant(api.ModeQuery)
	g.Fields = []string{"income", "address", "name", "id_no"} // not birth; order is the call's
	g.Masks = map[string]string{"address": "truncate(6)", "id_no": "hash"}
	p, err := newCallPlan(byID, g, maskKey)
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeCaller{rows: [][][]byte{zhang(), zhang(), zhang(), zhang()}}
	job := testJob(api.ModeQuery)
	ans, cause := answerCall(context.Background(), src, p, job, testProvider, newCallSigner(key), nil, nil)
	if cause != nil || ans.Error != "" {
		t.Fatalf("error %q, cause %v", ans.Error, cause)
	}
	if src.max != 3 || src.params["id_no"] != testID {
		t.Errorf("source asked for %d rows with %v; want 3 and the ID number normalised", src.max, src.params)
	}
	hash, _ := mask.Parse("hash")
	wantID := string(hash.Apply([]byte(testID), mask.Secret(maskKey, "g-1")))
	if want := []string{"id_no", "name", "address", "income"}; !reflect.DeepEqual(ans.Fields, want) {
		t.Errorf("fields %v, want %v", ans.Fields, want)
	}
	if len(ans.Rows) != 3 || !ans.Found {
		t.Fatalf("%d rows, found %v; want 3, true", len(ans.Rows), ans.Found)
	}
	if got, want := strs(ans.Rows[0]), []string{wantID, "张三丰", "北京市朝阳区", "<nil>"}; !reflect.DeepEqual(got, want) {
		t.Errorf("row %q, want %q", got, want)
	}
	if ans.Matches != nil {
		t.Errorf("a query answers matches %v", ans.Matches)
	}
	rc := checkCallReceipt(t, key, job, ans)
	if rc.ParamsDigest == receipt.ParamsDigest(job.ID, map[string]string{"id_no": testID}, nil) {
		t.Errorf("params digest is of the normalised parameters, which the consumer did not send")
	}

	t.Run("not found", func(t *testing.T) {
		ans, cause := answerCall(context.Background(), &fakeCaller{}, p, job, testProvider, newCallSigner(key), nil, nil)
		if cause != nil || ans.Error != "" || ans.Found || ans.Rows != nil {
			t.Fatalf("answer %+v, cause %v", ans, cause)
		}
		checkCallReceipt(t, key, job, ans)
	})
	t.Run("grant allows none of the fields", func(t *testing.T) {
		g := testGrant(api.ModeQuery)
		g.Fields = []string{"phone"}
		if _, err := newCallPlan(byID, g, maskKey); err == nil || !strings.Contains(err.Error(), "allows none of call by_id's fields") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad mask", func(t *testing.T) {
		g := testGrant(api.ModeQuery)
		g.Masks = map[string]string{"name": "blur"}
		if _, err := newCallPlan(byID, g, maskKey); err == nil || !strings.Contains(err.Error(), "grant g-1, field name") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestAnswerVerify: a verification answers whether the subject exists and
// whether each value matches (white space around and the case of ASCII
// letters aside), and nothing of the source's values.
func TestAnswerVerify(t *testing.T) {
	key, _ := seal.Generate()
	g := testGrant(api.ModeVerify)
	g.Fields = []string{"id_no", "name", "birth"}
	p, err := newCallPlan(byID, g, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		rows   [][][]byte
		values map[string]string
		found  bool
		want   map[string]bool
	}{
		{"all match", [][][]byte{zhang()}, map[string]string{"name": " 张三丰 ", "birth": "1949-12-31", "id_no": strings.ToLower(testID)},
			true, map[string]bool{"name": true, "birth": true, "id_no": true}},
		{"one differs", [][][]byte{zhang()}, map[string]string{"name": "张三", "birth": "1949-12-31"},
			true, map[string]bool{"name": false, "birth": true}},
		{"not found", nil, map[string]string{"name": "张三丰", "birth": "1949-12-31"},
			false, map[string]bool{"name": false, "birth": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &fakeCaller{rows: tc.rows}
			job := testJob(api.ModeVerify)
			job.Values = tc.values
			ans, cause := answerCall(context.Background(), src, p, job, testProvider, newCallSigner(key), nil, nil)
			if cause != nil || ans.Error != "" {
				t.Fatalf("error %q, cause %v", ans.Error, cause)
			}
			if src.max != 1 {
				t.Errorf("source asked for %d rows, want 1", src.max)
			}
			if ans.Found != tc.found || !reflect.DeepEqual(ans.Matches, tc.want) {
				t.Errorf("found %v, matches %v; want %v, %v", ans.Found, ans.Matches, tc.found, tc.want)
			}
			raw, _ := json.Marshal(ans)
			for _, v := range zhang() {
				if v != nil && strings.Contains(string(raw), string(v)) && !strings.Contains(strings.Join(mapValues(tc.values), "|"), string(v)) {
					t.Errorf("the answer holds the source's value %q:\n%s", v, raw)
				}
			}
			if ans.Fields != nil || ans.Rows != nil {
				t.Errorf("a verification answers fields %v, rows %v", ans.Fields, ans.Rows)
			}
			checkCallReceipt(t, key, job, ans)
		})
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestAnswerRefusals: bad parameters or values, and a field the grant
// does not cover, are refused before the database is asked; a database
// failure answers without the cause, the SQL or the values. None has a
// receipt.
func TestAnswerRefusals(t *testing.T) {
	key, _ := seal.Generate()
	g := testGrant(api.ModeVerify)
	g.Fields = []string{"id_no", "name"}
	p, err := newCallPlan(byID, g, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		params map[string]string
		values map[string]string
		want   string
	}{
		{"invalid ID number", map[string]string{"id_no": "110105194912310021"}, map[string]string{"name": "x"}, "id_no"},
		{"unknown parameter", map[string]string{"id_no": testID, "sql": "1"}, map[string]string{"name": "x"}, `no parameter "sql"`},
		{"no values", map[string]string{"id_no": testID}, nil, "needs at least one value"},
		{"field not in the call", map[string]string{"id_no": testID}, map[string]string{"phone": "1"}, `does not check field "phone"`},
		{"field not granted", map[string]string{"id_no": testID}, map[string]string{"birth": "1949-12-31"}, "grant g-1 does not let field birth be checked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &fakeCaller{rows: [][][]byte{zhang()}}
			job := testJob(api.ModeVerify)
			job.Params, job.Values = tc.params, tc.values
			ans, cause := answerCall(context.Background(), src, p, job, testProvider, newCallSigner(key), nil, nil)
			if cause != nil || !strings.Contains(ans.Error, tc.want) || ans.Receipt != nil || ans.Found || ans.Matches != nil {
				t.Fatalf("answer %+v, cause %v; want an error with %q", ans, cause, tc.want)
			}
			if src.calls != 0 {
				t.Errorf("the database was asked")
			}
		})
	}
	t.Run("database failure", func(t *testing.T) {
		dbErr := errors.New("Error 1064: syntax error near '" + testID + "' in SELECT secret FROM household")
		job := testJob(api.ModeVerify)
		job.Values = map[string]string{"name": "张三丰"}
		ans, cause := answerCall(context.Background(), &fakeCaller{err: dbErr}, p, job, testProvider, newCallSigner(key), nil, nil)
		if cause != dbErr || ans.Receipt != nil || ans.Matches != nil {
			t.Fatalf("answer %+v, cause %v", ans, cause)
		}
		if !strings.Contains(ans.Error, "its database failed") || strings.Contains(ans.Error, "SELECT") || strings.Contains(ans.Error, testID) {
			t.Errorf("error %q", ans.Error)
		}
		if s := scrub(cause.Error(), job); strings.Contains(s, testID) || strings.Contains(s, strings.ToLower(testID)) {
			t.Errorf("scrubbed cause %q still holds the ID number", s)
		}
	})
}

// TestSameValue pins down what a verification counts as a match.
func TestSameValue(t *testing.T) {
	for _, tc := range []struct {
		consumer string
		source   []byte
		want     bool
	}{
		{"11010519491231002x", []byte("11010519491231002X"), true},
		{" 91110000ma01abcd2x ", []byte("91110000MA01ABCD2X"), true},
		{"张三丰", []byte("张三丰 "), true},
		{"张三", []byte("张三丰"), false},
		{"", []byte(""), true},
		{"", nil, false},
		{"1949-12-31", []byte("1949-12-30"), false},
		{"a@b", []byte("A`B"), false}, // '@' and '`' differ only in bit 0x20, as letters' cases do
		{"ｘ", []byte("Ｘ"), false},     // full-width letters are not folded
	} {
		if got := sameValue(tc.consumer, tc.source); got != tc.want {
			t.Errorf("sameValue(%q, %q) = %v, want %v", tc.consumer, tc.source, got, tc.want)
		}
	}
}

// TestPrepare checks a job against the provider's own view before any
// database is asked: resource, call, grant (active, unexpired, this
// provider's, this resource's, this mode's, this consumer's) and an open
// source that answers calls.
func TestPrepare(t *testing.T) {
	key, _ := seal.Generate()
	cfg := DefaultConfig()
	cfg.Resources = []Entry{{Common: connectors.Common{ID: "gaj.huji", Calls: []connectors.CallDef{*byID}}}}
	newAgent := func(g api.GrantInfo, src connectors.Source) *callServer {
		a := &Agent{id: &Identity{NodeID: testProvider, Seal: key}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			grants: []api.GrantInfo{g}, grantsGen: make(chan struct{}), sources: map[string]connectors.Source{}, maskKey: []byte("k")}
		if src != nil {
			a.sources["gaj.huji"] = src
		}
		a.conf.Store(&cfg)
		return &callServer{a: a, signer: newCallSigner(key)}
	}
	open := &callerSource{}
	for _, tc := range []struct {
		name  string
		edit  func(g *api.GrantInfo, j *api.CallJob)
		src   connectors.Source
		want  string
		field string
	}{
		{name: "ready", src: open},
		{name: "unknown resource", src: open, edit: func(_ *api.GrantInfo, j *api.CallJob) { j.Resource = "gaj.other" }, want: "resource gaj.other is not published by node gaj"},
		{name: "unknown call", src: open, edit: func(_ *api.GrantInfo, j *api.CallJob) { j.Call = "by_name" }, want: `declares no call "by_name" at the provider (it declares: by_id)`},
		{name: "unknown grant", src: open, edit: func(_ *api.GrantInfo, j *api.CallJob) { j.Grant = "g-2" }, want: "grant g-2 is not active at the provider yet; try again in a second"},
		{name: "inactive grant", src: open, edit: func(g *api.GrantInfo, _ *api.CallJob) { g.Active = false }, want: "grant g-1 is not active at the provider yet"},
		{name: "expired grant", src: open, edit: func(g *api.GrantInfo, _ *api.CallJob) { g.Expires = time.Now().Add(-time.Minute) }, want: "grant g-1 expired at"},
		{name: "another provider's grant", src: open, edit: func(g *api.GrantInfo, _ *api.CallJob) { g.Provider = "rsj" }, want: "grant g-1 is for provider rsj, not gaj"},
		{name: "another resource's grant", src: open, edit: func(g *api.GrantInfo, _ *api.CallJob) { g.Resource = "gaj.other" }, want: "grant g-1 is for resource gaj.other, not gaj.huji"},
		{name: "another mode's grant", src: open, edit: func(g *api.GrantInfo, _ *api.CallJob) { g.Mode = api.ModeVerify }, want: "grant g-1 is for mode verify, not query"},
		{name: "batch mode", src: open, edit: func(g *api.GrantInfo, j *api.CallJob) { g.Mode, j.Mode = api.ModeBatch, api.ModeBatch }, want: "mode batch is not a call mode"},
		{name: "another consumer", src: open, edit: func(_ *api.GrantInfo, j *api.CallJob) { j.Consumer = "rsj" }, want: "grant g-1 is held by mzj, not rsj"},
		{name: "source not open", want: "resource gaj.huji is not open at the provider: see qz-agent status there"},
		{name: "source that answers no calls", src: plainSource{}, want: "does not answer calls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, job := testGrant(api.ModeQuery), testJob(api.ModeQuery)
			if tc.edit != nil {
				tc.edit(&g, &job)
			}
			s := newAgent(g, tc.src)
			p, src, err := s.prepare(job)
			if tc.want == "" {
				if err != nil || p == nil || src == nil {
					t.Fatalf("prepare: %v", err)
				}
				if p2, _, _ := s.prepare(job); p2 != p {
					t.Errorf("the plan is made again for the next call")
				}
				s.a.grantsGen = make(chan struct{})
				if p3, _, _ := s.prepare(job); p3 == p {
					t.Errorf("the plan is kept after the grants changed")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// plainSource is a source that answers no calls.
type plainSource struct{ connectors.Source }

// callerSource is a source that answers calls.
type callerSource struct {
	plainSource
	fakeCaller
}

// BenchmarkAnswerVerify is the provider's own work for one verification,
// the database aside: checks, matching, the receipt and its signature.
func BenchmarkAnswerVerify(b *testing.B) {
	key, _ := seal.Generate()
	p, err := newCallPlan(byID, testGrant(api.ModeVerify), nil)
	if err != nil {
		b.Fatal(err)
	}
	src := &fakeCaller{rows: [][][]byte{zhang()}}
	job := testJob(api.ModeVerify)
	job.Values = map[string]string{"name": "张三丰", "birth": "1949-12-31"}
	signer := newCallSigner(key)
	b.ReportAllocs()
	for b.Loop() {
		if ans, _ := answerCall(context.Background(), src, p, job, testProvider, signer, nil, nil); ans.Error != "" {
			b.Fatal(ans.Error)
		}
	}
}
