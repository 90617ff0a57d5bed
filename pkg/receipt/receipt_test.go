package receipt

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

func newKey(t *testing.T) *seal.PrivateKey {
	t.Helper()
	k, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testInfo() *batch.Info {
	d := sha256.Sum256([]byte("batch"))
	return &batch.Info{
		Header: batch.Header{
			Resource: "res-人口统计", Grant: "grant-7", Sequence: 42,
			Provider: "node-provider", Consumer: "node-consumer",
		},
		Digest: d[:],
	}
}

func signed(t *testing.T, k *seal.PrivateKey) Receipt {
	t.Helper()
	cst := time.FixedZone("CST", 8*3600)
	r, err := Sign(For(testInfo(), time.Date(2026, 3, 1, 17, 30, 0, 123456789, cst)), k)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestSignVerify(t *testing.T) {
	k := newKey(t)
	r := signed(t, k)
	if err := r.Verify(k.Public()); err != nil {
		t.Fatal(err)
	}
	if r.Version != Version || r.SealAlg != seal.AlgEd25519 || r.SealKeyID != k.KeyID() {
		t.Fatalf("filled fields: %+v", r)
	}
	if r.Applied.Location() != time.UTC {
		t.Fatalf("applied not normalized to UTC: %v", r.Applied)
	}
	if err := r.Matches(testInfo()); err != nil {
		t.Fatal(err)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	k := newKey(t)
	r := signed(t, k)
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"signature":"`) {
		t.Fatalf("signature not base64 in JSON: %s", b)
	}
	r2, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Verify(k.Public()); err != nil {
		t.Fatalf("receipt does not verify after JSON round trip: %v", err)
	}

	for name, in := range map[string]string{
		"unknown field": strings.Replace(string(b), `{"version"`, `{"extra":1,"version"`, 1),
		"trailing data": string(b) + "{}",
		"not JSON":      "receipt",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Unmarshal([]byte(in)); !errors.Is(err, batch.ErrRejected) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Unmarshal = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestAnyChangeFails changes each field in turn, then each signature bit:
// every change must make Verify fail with a rejection.
func TestAnyChangeFails(t *testing.T) {
	k := newKey(t)
	orig := signed(t, k)
	typ := reflect.TypeFor[Receipt]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Name == "Signature" {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			r := orig
			r.Signature = bytes.Clone(orig.Signature)
			v := reflect.ValueOf(&r).Elem().Field(i)
			switch x := v.Addr().Interface().(type) {
			case *string:
				*x = strings.Replace(*x, (*x)[:1], "9", 1)
				if *x == reflect.ValueOf(orig).Field(i).String() {
					*x += "0"
				}
			case *int:
				*x++
			case *uint64:
				*x++
			case *time.Time:
				*x = x.Add(time.Nanosecond)
			case *[]int:
				*x = append(*x, 7) // a bucket added to a reconcile answer
			case *[]string:
				*x = append(*x, "extra: x") // a file added to a verify answer
			default:
				t.Fatalf("field %s of type %s not covered by this test", f.Name, f.Type)
			}
			err := r.Verify(k.Public())
			if !errors.Is(err, batch.ErrRejected) {
				t.Fatalf("changed %s: Verify = %v, want a rejection", f.Name, err)
			}
		})
	}
	for i := range len(orig.Signature) * 8 {
		r := orig
		r.Signature = bytes.Clone(orig.Signature)
		r.Signature[i/8] ^= 1 << (i % 8)
		if err := r.Verify(k.Public()); !errors.Is(err, seal.ErrBadSignature) || !errors.Is(err, batch.ErrRejected) {
			t.Fatalf("flipped signature bit %d: Verify = %v", i, err)
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	k := newKey(t)
	other := newKey(t)
	r := signed(t, k)
	noSig := r
	noSig.Signature = nil
	// A receipt signed by other but claiming k's key ID.
	forged := r
	forged.Signature = other.Sign(SealDomain, mustCanonical(t, r))
	// A batch seal is not a receipt seal: same key, other domain.
	crossDomain := r
	crossDomain.Signature = k.Sign(batch.SealDomain, mustCanonical(t, r))

	tests := []struct {
		name string
		r    Receipt
		pub  seal.PublicKey
		want error
	}{
		{"other key", r, other.Public(), seal.ErrBadSignature},
		{"zero key", r, seal.PublicKey{}, seal.ErrBadSignature},
		{"no signature", noSig, k.Public(), seal.ErrBadSignature},
		{"forged", forged, k.Public(), seal.ErrBadSignature},
		{"batch domain", crossDomain, k.Public(), seal.ErrBadSignature},
		{"zero receipt", Receipt{}, k.Public(), ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.Verify(tc.pub)
			if !errors.Is(err, tc.want) || !errors.Is(err, batch.ErrRejected) {
				t.Fatalf("Verify = %v, want %v and batch.ErrRejected", err, tc.want)
			}
		})
	}
}

func mustCanonical(t *testing.T, r Receipt) []byte {
	t.Helper()
	b, err := r.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCanonicalForm(t *testing.T) {
	k := newKey(t)
	r := signed(t, k)
	got := string(mustCanonical(t, r))
	if !strings.HasPrefix(got, `{"version":1,"resource":"res-人口统计","grant":"grant-7","sequence":42,`) ||
		!strings.HasSuffix(got, `"signature":null}`) || !strings.Contains(got, `"applied":"2026-03-01T09:30:00.123456789Z"`) {
		t.Fatalf("canonical form changed: %s", got)
	}
}

func TestMatches(t *testing.T) {
	k := newKey(t)
	r := signed(t, k)
	other := testInfo()
	other.Header.Sequence++
	if err := r.Matches(other); !errors.Is(err, ErrMismatch) || !errors.Is(err, batch.ErrRejected) {
		t.Fatalf("Matches(other sequence) = %v", err)
	}
	other = testInfo()
	other.Digest[0] ^= 1
	if err := r.Matches(other); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Matches(other digest) = %v", err)
	}
}

func TestDestructionReceipt(t *testing.T) {
	k := newKey(t)
	d, err := SignDestruction(Destruction{Resource: "r", Grant: "g-1", Provider: "p", Consumer: "c", Destroyed: time.Now(), What: "200 rows"}, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Verify(k.Public()); err != nil {
		t.Fatal(err)
	}
	changed := d
	changed.What = "2 rows"
	if err := changed.Verify(k.Public()); !errors.Is(err, batch.ErrRejected) {
		t.Fatalf("a changed receipt: %v", err)
	}
	if err := d.Verify(newKey(t).Public()); !errors.Is(err, batch.ErrRejected) {
		t.Fatalf("another key: %v", err)
	}
}
