package receipt

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
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

// TestCallV1Golden: a version 1 receipt signed by the code before keyed
// receipts (testdata/call-v1.json, with its provider's public key) still
// verifies, and its plain digests still cover its call and answer.
func TestCallV1Golden(t *testing.T) {
	raw, err := os.ReadFile("testdata/call-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile("testdata/call-v1.pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := seal.ParsePublic(strings.TrimSpace(string(text)))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckCallSeal(raw, func(string, string) (seal.PublicKey, error) { return pub, nil }); err != nil {
		t.Fatalf("an old receipt no longer verifies: %v", err)
	}
	c, _ := ParseCall(raw)
	name := "张三"
	job := api.CallJob{ID: c.ID, Grant: c.Grant, Resource: c.Resource, Call: c.Call, Mode: c.Mode, Consumer: c.Consumer,
		Params: map[string]string{"id_no": "11010519491231002X"}}
	if err := c.Covers(job, "gaj", &api.CallAnswer{Fields: []string{"name"}, Rows: [][]*string{{&name}}, Found: true}, nil); err != nil {
		t.Errorf("an old receipt no longer covers its call: %v", err)
	}
	c.Version = CallKeyed
	if err := c.Verify(pub); err == nil {
		t.Error("an old receipt relabelled version 2 verifies")
	}
}

// TestCallKey: the consumer and the provider agree the same key for a call
// from their own private key and the other's public key; anyone else (the
// hub, with its own key and both public keys) gets another; every call has
// its own.
func TestCallKey(t *testing.T) {
	keyer := func() *CallKeyer {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewCallKeyer(k)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cons, prov, hub := keyer(), keyer(), keyer()
	kc, err := cons.CallKey(prov.Public(), "c1", "mzj", "gaj")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := prov.CallKey(cons.Public(), "c1", "mzj", "gaj")
	if err != nil || !bytes.Equal(kc, kp) || len(kc) != 32 {
		t.Fatalf("consumer %x, provider %x (%v): want the same 32 bytes", kc, kp, err)
	}
	for name, other := range map[string]func() ([]byte, error){
		"the hub with the consumer's key": func() ([]byte, error) { return hub.CallKey(cons.Public(), "c1", "mzj", "gaj") },
		"the hub with the provider's key": func() ([]byte, error) { return hub.CallKey(prov.Public(), "c1", "mzj", "gaj") },
		"another call":                    func() ([]byte, error) { return cons.CallKey(prov.Public(), "c2", "mzj", "gaj") },
		"another consumer named":          func() ([]byte, error) { return cons.CallKey(prov.Public(), "c1", "rsj", "gaj") },
	} {
		if k, err := other(); err != nil || bytes.Equal(k, kc) {
			t.Errorf("%s: %x (%v), want another key", name, k, err)
		}
	}
	edPubKey, ed, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := NewCallKeyer(ed); err == nil {
		t.Error("an Ed25519 key agrees call keys")
	}
	edPub, _ := x509.MarshalPKIXPublicKey(edPubKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384Pub, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	for name, peer := range map[string][]byte{"none": nil, "garbage": []byte("not a key"), "Ed25519": edPub, "P-384": p384Pub} {
		if _, err := cons.CallKey(peer, "c1", "mzj", "gaj"); !errors.Is(err, ErrPeerKey) {
			t.Errorf("peer key %s: %v, want ErrPeerKey", name, err)
		}
	}
}

// TestKeyedReceipt: a version 2 receipt covers its call only with the
// call's key; its digests are not the plain ones nor ones keyed with
// anything but the key; Describes checks what the hub can without it.
func TestKeyedReceipt(t *testing.T) {
	sk, _ := seal.Generate()
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cons, _ := NewCallKeyer(k1)
	prov, _ := NewCallKeyer(k2)
	key, _ := prov.CallKey(cons.Public(), "c1", "mzj", "gaj")
	params := map[string]string{"id_no": "11010519491231002X"}
	job := api.CallJob{ID: "c1", Grant: "g1", Resource: "gaj.huji", Call: "by_id", Mode: api.ModeVerify, Consumer: "mzj", Params: params,
		Values: map[string]string{"name": "张三"}, ConsumerKey: cons.Public()}
	a := &api.CallAnswer{Found: true, Matches: map[string]bool{"name": true}}
	sign := func(change func(*Call)) Call {
		c := Call{Version: CallKeyed, ID: "c1", Grant: "g1", Resource: "gaj.huji", Call: "by_id", Mode: api.ModeVerify, Provider: "gaj", Consumer: "mzj",
			Asked: time.Now(), Answered: time.Now(), ParamsDigest: KeyedParamsDigest(key, job.ID, params, job.Values),
			AnswerDigest: KeyedAnswerDigest(key, nil, nil, true, a.Matches), Found: true, ConsumerKey: cons.Public(), ProviderKey: prov.Public()}
		if change != nil {
			change(&c)
		}
		s, err := SignCall(c, sk)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(s)
		back, _ := ParseCall(raw)
		return back
	}
	c := sign(nil)
	if err := c.Verify(sk.Public()); err != nil {
		t.Fatal(err)
	}
	if err := c.Covers(job, "gaj", a, key); err != nil {
		t.Fatalf("a good keyed receipt: %v", err)
	}
	if err := c.Describes(job, "gaj", a); err != nil {
		t.Fatalf("a good keyed receipt, without its key: %v", err)
	}
	if err := c.Covers(job, "gaj", a, nil); err == nil || !strings.Contains(err.Error(), "not at hand") {
		t.Errorf("without the key: %v", err)
	}
	other, _ := cons.CallKey(prov.Public(), "c2", "mzj", "gaj")
	if err := c.Covers(job, "gaj", a, other); err == nil || !strings.Contains(err.Error(), "other parameters") {
		t.Errorf("with another call's key: %v", err)
	}
	if c.ParamsDigest == ParamsDigest(job.ID, params, job.Values) || c.ParamsDigest == KeyedParamsDigest(nil, job.ID, params, job.Values) ||
		c.ParamsDigest == KeyedAnswerDigest(key, nil, nil, true, a.Matches) {
		t.Error("the keyed digest is one computable without the call's key, or equals the answer's")
	}
	for _, tc := range []struct {
		name   string
		c      Call
		answer *api.CallAnswer
		want   string
	}{
		{"found changed", sign(func(c *Call) { c.Found = false }), a, "found false"},
		{"another consumer key", sign(func(c *Call) { c.ConsumerKey = prov.Public() }), a, "another consumer key"},
		{"another answer", c, &api.CallAnswer{Found: true, Matches: map[string]bool{"name": false}}, ""},
	} {
		err := tc.c.Describes(job, "gaj", tc.answer)
		if tc.want == "" {
			// Only the key tells a changed verdict: Covers finds it.
			if err != nil || tc.c.Covers(job, "gaj", tc.answer, key) == nil {
				t.Errorf("%s: Describes %v; Covers must refuse it", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := SignCall(Call{Version: CallKeyed, ID: "c1", Grant: "g1", Provider: "gaj", Consumer: "mzj", Answered: time.Now()}, sk); err == nil {
		t.Error("a keyed receipt without the nodes' keys was signed")
	}
}

// BenchmarkCallKey is what keying costs a call on each side: the call's
// key from a peer already seen, and the keyed digest of the parameters;
// BenchmarkCallKeyNewPeer adds the ECDH of a peer not seen before.
func BenchmarkCallKey(b *testing.B) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a, _ := NewCallKeyer(k1)
	peer, _ := NewCallKeyer(k2)
	params := map[string]string{"id_no": "11010519491231002X"}
	for b.Loop() {
		key, err := a.CallKey(peer.Public(), "6f1c2a9e0b7d4e3f8a1b2c3d4e5f6071", "mzj", "gaj")
		if err != nil {
			b.Fatal(err)
		}
		KeyedParamsDigest(key, "6f1c2a9e0b7d4e3f8a1b2c3d4e5f6071", params, nil)
	}
}

func BenchmarkCallKeyNewPeer(b *testing.B) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a, _ := NewCallKeyer(k1)
	peer, _ := NewCallKeyer(k2)
	for b.Loop() {
		clear(a.prks)
		if _, err := a.CallKey(peer.Public(), "6f1c2a9e0b7d4e3f8a1b2c3d4e5f6071", "mzj", "gaj"); err != nil {
			b.Fatal(err)
		}
	}
}
