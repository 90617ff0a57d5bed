package agent

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// TestCallerCheck: the consumer uses an answer only when the provider's
// receipt verifies, is recent, names this node's grant and provider, and
// covers the question asked and the answer got.
func TestCallerCheck(t *testing.T) {
	key, _ := seal.Generate()
	other, _ := seal.Generate()
	req := api.CallRequest{Resource: "gaj.huji", Call: "by_id", Mode: api.ModeVerify,
		Params: map[string]string{"id_no": "11010519491231002X"}, Values: map[string]string{"name": "张三"}}
	grant := api.GrantInfo{ID: "g-1", Resource: "gaj.huji", Provider: "gaj", Consumer: "mzj", Mode: api.ModeVerify, Active: true}
	c := &caller{me: "mzj",
		keys:  func(context.Context, string, string) (seal.PublicKey, error) { return key.Public(), nil },
		grant: func(string, string) (api.GrantInfo, bool) { return grant, true }}
	answer := func(signer *seal.PrivateKey, change func(*receipt.Call)) *api.CallAnswer {
		a := &api.CallAnswer{ID: "c-1", Grant: "g-1", Resource: req.Resource, Call: req.Call, Mode: req.Mode,
			Found: true, Matches: map[string]bool{"name": true}}
		rc := receipt.Call{ID: a.ID, Grant: "g-1", Resource: req.Resource, Call: req.Call, Mode: req.Mode, Provider: "gaj", Consumer: "mzj",
			Asked: time.Now(), Answered: time.Now(), ParamsDigest: receipt.ParamsDigest(a.ID, req.Params, req.Values),
			AnswerDigest: receipt.AnswerDigest(nil, nil, true, a.Matches), Found: true}
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
		{"other parameters", answer(key, func(rc *receipt.Call) { rc.ParamsDigest = receipt.ParamsDigest("c-1", nil, nil) }), "other parameters"},
		{"another answer", func() *api.CallAnswer { a := answer(key, nil); a.Matches["name"] = false; return a }(), "another answer"},
	} {
		if err := c.check(context.Background(), req, tc.ans); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
