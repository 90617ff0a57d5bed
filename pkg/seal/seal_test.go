package seal

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func mustGenerate(t *testing.T) *PrivateKey {
	t.Helper()
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignVerify(t *testing.T) {
	k := mustGenerate(t)
	other := mustGenerate(t)
	msg := []byte("数据批次 digest")
	sig := k.Sign("qianzhi-test-v1", msg)

	if err := k.Public().Verify("qianzhi-test-v1", msg, sig); err != nil {
		t.Fatalf("good signature: %v", err)
	}
	flipped := append([]byte(nil), sig...)
	flipped[10] ^= 0x01
	badMsg := append([]byte(nil), msg...)
	badMsg[0] ^= 0x80
	tests := []struct {
		name   string
		pub    PublicKey
		domain string
		msg    []byte
		sig    []byte
	}{
		{"other key", other.Public(), "qianzhi-test-v1", msg, sig},
		{"other domain", k.Public(), "qianzhi-test-v2", msg, sig},
		{"changed message", k.Public(), "qianzhi-test-v1", badMsg, sig},
		{"flipped signature", k.Public(), "qianzhi-test-v1", msg, flipped},
		{"short signature", k.Public(), "qianzhi-test-v1", msg, sig[:63]},
		{"zero key", PublicKey{}, "qianzhi-test-v1", msg, sig},
		{"NUL in domain", k.Public(), "qianzhi\x00test", msg, sig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.pub.Verify(tc.domain, tc.msg, tc.sig)
			if !errors.Is(err, ErrBadSignature) {
				t.Fatalf("Verify = %v, want ErrBadSignature", err)
			}
		})
	}
}

// The domain separator must be part of the signed bytes: a signature over
// ("a", "b\x00c") must not verify as ("a\x00b", "c") — the latter domain is
// refused outright — nor as ("ab", "c").
func TestDomainSeparation(t *testing.T) {
	k := mustGenerate(t)
	sig := k.Sign("a", []byte("bc"))
	if err := k.Public().Verify("ab", []byte("c"), sig); err == nil {
		t.Fatal("signature moved across the domain boundary")
	}
	// Raw Ed25519 over the concatenation must agree with the documented form.
	raw := k.Public().Bytes()
	if !ed25519.Verify(raw, []byte("a\x00bc"), sig) {
		t.Fatal("signed bytes are not domain + NUL + msg")
	}
}

func TestKeyID(t *testing.T) {
	k := mustGenerate(t)
	sum := sha256.Sum256(k.Public().Bytes())
	want := hex.EncodeToString(sum[:16])
	if got := k.KeyID(); got != want || k.Public().KeyID() != want {
		t.Fatalf("KeyID = %q, want %q", got, want)
	}
	if len(want) != 32 {
		t.Fatalf("KeyID length %d", len(want))
	}
	if (PublicKey{}).KeyID() != "" {
		t.Fatal("zero key has a KeyID")
	}
	if k.Algorithm() != AlgEd25519 || k.Public().Algorithm() != AlgEd25519 {
		t.Fatal("algorithm")
	}
}

func TestPEMRoundTrip(t *testing.T) {
	k := mustGenerate(t)
	pemBytes := k.MarshalPEM()
	if !strings.HasPrefix(string(pemBytes), "-----BEGIN PRIVATE KEY-----") {
		t.Fatalf("PEM header: %s", pemBytes)
	}
	k2, err := ParsePrivatePEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	if k2.Public() != k.Public() {
		t.Fatal("public key changed through PEM")
	}
	sig := k2.Sign("d", []byte("m"))
	if err := k.Public().Verify("d", []byte("m"), sig); err != nil {
		t.Fatal(err)
	}

	bad := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"not PEM", "hello"},
		{"wrong type", strings.Replace(string(pemBytes), "PRIVATE KEY", "PUBLIC KEY", 2)},
		{"garbage body", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParsePrivatePEM([]byte(tc.in)); err == nil {
				t.Fatal("parsed")
			}
		})
	}
}

func TestPublicText(t *testing.T) {
	k := mustGenerate(t)
	text, err := k.Public().MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(text), "ed25519:") {
		t.Fatalf("text %q", text)
	}
	p, err := ParsePublic(string(text))
	if err != nil {
		t.Fatal(err)
	}
	if p != k.Public() {
		t.Fatal("round trip changed key")
	}
	if _, err := (PublicKey{}).MarshalText(); err == nil {
		t.Fatal("zero key marshaled")
	}

	bad := []struct {
		name, in, wantInErr string
	}{
		{"no alg", "AAAA", "want"},
		{"wrong alg", "sm2:AAAA", "not supported"},
		{"bad base64", "ed25519:!!!", "base64"},
		{"short", "ed25519:AAAA", "want 32"},
		{"long", "ed25519:" + strings.Repeat("A", 48), "want 32"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePublic(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.wantInErr) {
				t.Fatalf("err = %v, want mention of %q", err, tc.wantInErr)
			}
		})
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "seal.pem")
	k1, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	k2, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Public() != k2.Public() {
		t.Fatal("second LoadOrCreate made a new key")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("leftover files: %v", entries)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}

	corrupt := filepath.Join(dir, "corrupt.pem")
	if err := os.WriteFile(corrupt, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(corrupt); err == nil {
		t.Fatal("corrupt key file accepted")
	}
}

func TestLoadOrCreateRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seal.pem")
	const n = 8
	keys := make([]*PrivateKey, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreate(path) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if keys[i].Public() != keys[0].Public() {
			t.Fatalf("racing creators got different keys")
		}
	}
}
