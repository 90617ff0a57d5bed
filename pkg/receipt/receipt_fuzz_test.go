package receipt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// The fuzz targets here decode receipts as a hub or an agent does when a
// peer sends one, and check that only what the key sealed verifies: any
// input that decodes and verifies must state exactly what a real signed
// receipt stated. A fixed key makes every fuzz worker process agree on
// which receipts are real (go test -fuzz runs the target in each of them).

// fuzzKey returns a seal key derived from name, the same in every process.
func fuzzKey(t testing.TB, name string) *seal.PrivateKey {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, name)
	der, err := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	k, err := seal.ParsePrivatePEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var fuzzTime = time.Date(2026, 3, 1, 9, 30, 0, 123456789, time.UTC)

// sealedSet remembers the canonical bytes and signatures of real receipts.
type sealedSet map[string][]byte

func (s sealedSet) add(canonical, sig []byte) { s[string(canonical)] = sig }

// check fails t unless canonical and sig are those of a real receipt.
func (s sealedSet) check(t *testing.T, what string, canonical []byte, err error, sig []byte) {
	t.Helper()
	if err != nil {
		t.Fatalf("canonical form of a verified %s: %v", what, err)
	}
	want, ok := s[string(canonical)]
	if !ok || !bytes.Equal(want, sig) {
		t.Fatalf("a %s the key never sealed verified: %s", what, canonical)
	}
}

// FuzzReceipt decodes batch receipts as an agent does (Unmarshal) and
// checks them with Verify and Matches.
func FuzzReceipt(f *testing.F) {
	k := fuzzKey(f, "FuzzReceipt")
	info := testInfo()
	real := sealedSet{}
	for _, r := range []Receipt{
		For(info, fuzzTime),
		func() Receipt { r := For(info, fuzzTime); r.Mismatch = []int{3, 17}; return r }(),
		func() Receipt {
			r := For(info, fuzzTime)
			r.MismatchFiles = []string{"differs: 报表/一.xlsx", "extra: b"}
			return r
		}(),
	} {
		s, err := Sign(r, k)
		if err != nil {
			f.Fatal(err)
		}
		c, _ := s.Canonical()
		real.add(c, s.Signature)
		b, _ := s.Marshal()
		f.Add(b)
	}
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Unmarshal(b)
		if err != nil {
			if !errors.Is(err, batch.ErrRejected) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("undecodable receipt not a rejection: %v", err)
			}
			return
		}
		if err := r.Verify(k.Public()); err != nil {
			if !errors.Is(err, batch.ErrRejected) {
				t.Fatalf("failed receipt not a rejection: %v", err)
			}
			return
		}
		c, err := r.Canonical()
		real.check(t, "receipt", c, err, r.Signature)
		if err := r.Matches(info); err != nil {
			t.Fatalf("a real receipt does not match its batch: %v", err)
		}
		// What verified once verifies again after the hub stores and
		// forwards it.
		again, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if r2, err := Unmarshal(again); err != nil || r2.Verify(k.Public()) != nil {
			t.Fatalf("a verified receipt does not survive a round trip: %v", err)
		}
	})
}

// FuzzCallReceipt decodes call receipts as the hub and the consumer do
// (ParseCall) and checks them with Verify and Covers.
func FuzzCallReceipt(f *testing.F) {
	k := fuzzKey(f, "FuzzCallReceipt")
	name := "张三"
	job := api.CallJob{ID: "c1", Grant: "g1", Resource: "gaj.huji", Call: "by_id", Mode: api.ModeQuery, Consumer: "mzj",
		Params: map[string]string{"id_no": "11010519491231002X"}}
	ans := api.CallAnswer{Fields: []string{"姓名"}, Rows: [][]*string{{&name}}, Found: true}
	vjob := job
	vjob.ID, vjob.Mode, vjob.Values = "c2", api.ModeVerify, map[string]string{"姓名": "张三"}
	vans := api.CallAnswer{Found: true, Matches: map[string]bool{"姓名": true}}
	real := sealedSet{}
	for _, p := range []struct {
		job api.CallJob
		a   api.CallAnswer
	}{{job, ans}, {vjob, vans}} {
		c, err := SignCall(Call{ID: p.job.ID, Grant: p.job.Grant, Resource: p.job.Resource, Call: p.job.Call, Mode: p.job.Mode,
			Provider: "gaj", Consumer: p.job.Consumer, Asked: fuzzTime, Answered: fuzzTime.Add(3 * time.Millisecond),
			ParamsDigest: ParamsDigest(p.job.ID, p.job.Params, p.job.Values),
			AnswerDigest: AnswerDigest(p.a.Fields, p.a.Rows, p.a.Found, p.a.Matches), Rows: len(p.a.Rows), Found: p.a.Found}, k)
		if err != nil {
			f.Fatal(err)
		}
		canon, _ := c.canonical()
		real.add(canon, c.Signature)
		b, _ := json.Marshal(c)
		f.Add(b)
	}
	f.Add([]byte(`{"version":1,"seal_alg":"ed25519","signature":"AA=="}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCall(b)
		if err != nil {
			if !errors.Is(err, batch.ErrRejected) {
				t.Fatalf("undecodable call receipt not a rejection: %v", err)
			}
			return
		}
		if err := c.Verify(k.Public()); err != nil {
			if !errors.Is(err, batch.ErrRejected) {
				t.Fatalf("failed call receipt not a rejection: %v", err)
			}
			return
		}
		canon, err := c.canonical()
		real.check(t, "call receipt", canon, err, c.Signature)
		j, a := job, ans
		if c.ID == vjob.ID {
			j, a = vjob, vans
		}
		if err := c.Covers(j, "gaj", &a, nil); err != nil {
			t.Fatalf("a real call receipt does not cover its call: %v", err)
		}
	})
}

// FuzzDestruction decodes destruction receipts as the hub does (into
// Destruction with encoding/json) and checks them with Verify.
func FuzzDestruction(f *testing.F) {
	k := fuzzKey(f, "FuzzDestruction")
	real := sealedSet{}
	d, err := SignDestruction(Destruction{Resource: "gaj.hukou", Grant: "g-mzj", Provider: "gaj", Consumer: "mzj",
		Destroyed: fuzzTime, What: "200 rows of table people"}, k)
	if err != nil {
		f.Fatal(err)
	}
	canon, _ := d.canonical()
	real.add(canon, d.Signature)
	b, _ := json.Marshal(d)
	f.Add(b)
	f.Add([]byte(`{"version":1,"destroyed":"2026-03-01T17:30:00+08:00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Destruction
		if json.Unmarshal(b, &d) != nil {
			return
		}
		if err := d.Verify(k.Public()); err != nil {
			if !errors.Is(err, batch.ErrRejected) {
				t.Fatalf("failed destruction receipt not a rejection: %v", err)
			}
			return
		}
		canon, err := d.canonical()
		real.check(t, "destruction receipt", canon, err, d.Signature)
	})
}
