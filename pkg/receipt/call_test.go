package receipt

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

// TestCallReceipt: a call receipt verifies with the provider's key after a
// JSON round trip, and any change to what it states, or another key, makes
// it fail.
func TestCallReceipt(t *testing.T) {
	k, _ := seal.Generate()
	other, _ := seal.Generate()
	name := "张三"
	c, err := SignCall(Call{ID: "c1", Grant: "g1", Resource: "gaj.huji", Call: "by_id", Mode: "query", Provider: "gaj", Consumer: "mzj",
		Asked: time.Now(), Answered: time.Now(), ParamsDigest: ParamsDigest("c1", map[string]string{"id_no": "11010519491231002X"}, nil),
		AnswerDigest: AnswerDigest([]string{"name"}, [][]*string{{&name}}, true, nil), Rows: 1, Found: true}, k)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(c)
	keys := func(pub seal.PublicKey) func(string, string) (seal.PublicKey, error) {
		return func(node, keyID string) (seal.PublicKey, error) {
			if node != "gaj" || keyID != pub.KeyID() {
				return seal.PublicKey{}, errors.New("no such key")
			}
			return pub, nil
		}
	}
	if err := CheckCallSeal(raw, keys(k.Public())); err != nil {
		t.Fatalf("a good receipt: %v", err)
	}
	if err := CheckCallSeal(raw, keys(other.Public())); err == nil {
		t.Error("a receipt checked with another node's key passed")
	}
	for _, change := range []func(*Call){
		func(c *Call) { c.Consumer = "rsj" },
		func(c *Call) { c.Rows = 2 },
		func(c *Call) { c.Found = false },
		func(c *Call) { c.AnswerDigest = AnswerDigest(nil, nil, false, map[string]bool{"name": true}) },
		func(c *Call) {
			c.ParamsDigest = ParamsDigest("c1", map[string]string{"id_no": "11010519491231003X"}, nil)
		},
		func(c *Call) { c.Answered = c.Answered.Add(time.Second) },
	} {
		d := c
		change(&d)
		if err := d.Verify(k.Public()); !errors.Is(err, seal.ErrBadSignature) {
			t.Errorf("a changed receipt %+v: %v", d, err)
		}
	}
	// Digests: the same question and answer give the same digest in any
	// map order; another call ID gives another.
	a := ParamsDigest("c1", map[string]string{"a": "1", "b": "2"}, map[string]string{"x": "y", "z": "w"})
	if a != ParamsDigest("c1", map[string]string{"b": "2", "a": "1"}, map[string]string{"z": "w", "x": "y"}) || a == ParamsDigest("c2", map[string]string{"a": "1", "b": "2"}, map[string]string{"x": "y", "z": "w"}) {
		t.Error("ParamsDigest depends on map order or ignores the call ID")
	}
}
