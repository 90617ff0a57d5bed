package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// TestCallerCheck: the consumer uses an answer only when the provider's
// receipt verifies, is recent, names this node's grant and provider, and
// covers the question asked and the answer got: with plain digests
// (version 1) and with digests keyed with the call's key (version 2).
func TestCallerCheck(t *testing.T) {
	for _, version := range []int{receipt.CallPlain, receipt.CallKeyed} {
		t.Run(fmt.Sprintf("version %d", version), func(t *testing.T) { testCallerCheck(t, version) })
	}
}

func testCallerCheck(t *testing.T, version int) {
	key, _ := seal.Generate()
	other, _ := seal.Generate()
	req := api.CallRequest{Resource: "gaj.huji", Call: "by_id", Mode: api.ModeVerify,
		Params: map[string]string{"id_no": "11010519491231002X"}, Values: map[string]string{"name": "张三"}}
	grant := api.GrantInfo{ID: "g-1", Resource: "gaj.huji", Provider: "gaj", Consumer: "mzj", Mode: api.ModeVerify, Active: true}
	c := &caller{me: "mzj",
		keys:  func(context.Context, string, string) (seal.PublicKey, error) { return key.Public(), nil },
		grant: func(string, string) (api.GrantInfo, bool) { return grant, true }}
	// The digests as the version makes them: plain, or keyed with the
	// call's key agreed between the consumer's and the provider's keys.
	params := func(id string, p, v map[string]string) string { return receipt.ParamsDigest(id, p, v) }
	answerDigest := func(m map[string]bool) string { return receipt.AnswerDigest(nil, nil, true, m) }
	var consKey, provKey []byte
	if version == receipt.CallKeyed {
		ck, _ := pki.NewKey()
		pk, _ := pki.NewKey()
		cons, _ := receipt.NewCallKeyer(ck)
		prov, _ := receipt.NewCallKeyer(pk)
		c.agree, req.ConsumerKey = cons, cons.Public()
		consKey, provKey = cons.Public(), prov.Public()
		k, err := prov.CallKey(consKey, "c-1", "mzj", "gaj")
		if err != nil {
			t.Fatal(err)
		}
		params = func(id string, p, v map[string]string) string { return receipt.KeyedParamsDigest(k, id, p, v) }
		answerDigest = func(m map[string]bool) string { return receipt.KeyedAnswerDigest(k, nil, nil, true, m) }
	}
	answer := func(signer *seal.PrivateKey, change func(*receipt.Call)) *api.CallAnswer {
		a := &api.CallAnswer{ID: "c-1", Grant: "g-1", Resource: req.Resource, Call: req.Call, Mode: req.Mode,
			Found: true, Matches: map[string]bool{"name": true}}
		rc := receipt.Call{Version: version, ID: a.ID, Grant: "g-1", Resource: req.Resource, Call: req.Call, Mode: req.Mode, Provider: "gaj", Consumer: "mzj",
			Asked: time.Now(), Answered: time.Now(), ParamsDigest: params(a.ID, req.Params, req.Values),
			AnswerDigest: answerDigest(a.Matches), Found: true, ConsumerKey: consKey, ProviderKey: provKey}
		if change != nil {
			change(&rc)
		}
		signed, err := receipt.SignCall(rc, signer)
		if err != nil {
			t.Fatal(err)
		}
		a.Receipt, _ = json.Marshal(signed)
		return a
	}
	if err := c.check(context.Background(), req, answer(key, nil)); err != nil {
		t.Fatalf("a good answer: %v", err)
	}
	for _, tc := range []struct {
		name string
		ans  *api.CallAnswer
		want string
	}{
		{"another key", answer(other, nil), "call receipt c-1"},
		{"an old receipt", answer(key, func(rc *receipt.Call) { rc.Answered = time.Now().Add(-time.Hour) }), "more than 10m0s from now"},
		{"another grant", answer(key, func(rc *receipt.Call) { rc.Grant = "g-2" }), "not this call"},
		{"another provider", answer(key, func(rc *receipt.Call) { rc.Provider = "rsj" }), "not this call"},
		{"other parameters", answer(key, func(rc *receipt.Call) { rc.ParamsDigest = params("c-1", nil, nil) }), "other parameters"},
		{"another answer", func() *api.CallAnswer { a := answer(key, nil); a.Matches["name"] = false; return a }(), "another answer"},
	} {
		if err := c.check(context.Background(), req, tc.ans); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestCallerKeyed: a consumer that sends its key gets a receipt whose
// digests are keyed with the call's key, which it agrees with the
// provider's key the receipt names, checks, and hands its application;
// without its key the call gets a plain receipt, as from an older agent.
// A key the hub swapped for its own, or one that cannot agree a key, is
// refused.
func TestCallerKeyed(t *testing.T) {
	sk, _ := seal.Generate()
	nodeKey := func() *receipt.CallKeyer {
		k, _ := pki.NewKey()
		c, err := receipt.NewCallKeyer(k)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cons, prov, hub := nodeKey(), nodeKey(), nodeKey()
	g := testGrant(api.ModeQuery)
	p, err := newCallPlan(byID, g, []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	c := &caller{me: testConsumer, agree: cons,
		keys:  func(context.Context, string, string) (seal.PublicKey, error) { return sk.Public(), nil },
		grant: func(string, string) (api.GrantInfo, bool) { return g, true }}
	// ask is the call as the consumer sends it and as the provider gets
	// it (with the consumer's key the hub passed on, which may be another).
	ask := func(sent, passed []byte, provKeys *receipt.CallKeyer) (api.CallRequest, api.CallAnswer) {
		job := testJob(api.ModeQuery)
		job.Asked, job.ConsumerKey = time.Now(), passed
		req := api.CallRequest{Resource: job.Resource, Call: job.Call, Mode: job.Mode, Params: job.Params, ConsumerKey: sent}
		ans, cause := answerCall(context.Background(), &fakeCaller{rows: [][][]byte{zhang()}}, p, job, testProvider, newCallSigner(sk), provKeys, nil)
		if cause != nil {
			t.Fatal(cause)
		}
		return req, ans
	}

	req, ans := ask(cons.Public(), cons.Public(), prov)
	if ans.Error != "" {
		t.Fatal(ans.Error)
	}
	rc, _ := receipt.ParseCall(ans.Receipt)
	if rc.Version != receipt.CallKeyed || rc.ParamsDigest == receipt.ParamsDigest(ans.ID, req.Params, nil) {
		t.Fatalf("receipt version %d with digest %s: want a keyed one", rc.Version, rc.ParamsDigest)
	}
	if err := c.check(context.Background(), req, &ans); err != nil {
		t.Fatalf("a keyed answer: %v", err)
	}
	want, _ := prov.CallKey(cons.Public(), ans.ID, testConsumer, testProvider)
	if ans.CallKey != hex.EncodeToString(want) {
		t.Errorf("call key handed on %q, want the provider's %x", ans.CallKey, want)
	}

	// The hub passes on its own key instead of the consumer's: the
	// receipt names it, and the consumer refuses it.
	req, ans = ask(cons.Public(), hub.Public(), prov)
	if err := c.check(context.Background(), req, &ans); err == nil || !strings.Contains(err.Error(), "another consumer key") || ans.CallKey != "" {
		t.Errorf("a receipt keyed with the hub's key: %v (call key %q)", err, ans.CallKey)
	}
	// A key that cannot agree one: the provider refuses the call.
	if _, ans = ask([]byte("not a key"), []byte("not a key"), prov); !strings.Contains(ans.Error, "consumer_key cannot agree a call key") || ans.Receipt != nil {
		t.Errorf("a bad consumer key: %+v", ans)
	}
	// A call without the consumer's key, or a provider that cannot agree
	// keys: a plain receipt, still checked.
	for name, x := range map[string]struct {
		sent []byte
		prov *receipt.CallKeyer
	}{"no consumer key": {nil, prov}, "no provider key": {cons.Public(), nil}} {
		req, ans := ask(x.sent, x.sent, x.prov)
		rc, _ := receipt.ParseCall(ans.Receipt)
		if err := c.check(context.Background(), req, &ans); err != nil || rc.Version != receipt.CallPlain || ans.CallKey != "" {
			t.Errorf("%s: version %d, %v, call key %q: want a plain receipt that checks", name, rc.Version, err, ans.CallKey)
		}
	}
	// A consumer whose key cannot agree one cannot check a keyed receipt.
	req, ans = ask(cons.Public(), cons.Public(), prov)
	plain := *c
	plain.agree = nil
	if err := plain.check(context.Background(), req, &ans); err == nil || !strings.Contains(err.Error(), "cannot agree one") {
		t.Errorf("a keyed receipt without this node's key: %v", err)
	}
}
