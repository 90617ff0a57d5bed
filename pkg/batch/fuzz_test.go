package batch

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

// FuzzVerify feeds arbitrary bytes to the reader: it must never panic or
// hang, and whatever is not the original sealed batch must be rejected
// rather than accepted. make test runs the seed corpus (the f.Add values
// and testdata/fuzz/FuzzVerify); make fuzz explores further.
func FuzzVerify(f *testing.F) {
	// The key is fixed, not generated: go test -fuzz runs this function in
	// every worker process, and with a key of their own the workers would
	// refuse the coordinator's seeds as sealed by an unknown key, so the
	// digest, seal and body code would never be reached.
	key := fixedKey(f, "FuzzVerify")
	lookup := lookupFor(key)
	good := map[string]bool{}
	for _, c := range []string{CompressionNone, CompressionZstd} {
		for _, b := range [][]byte{smallBatch(f, key, c), rowsBatch(f, key, c)} {
			if _, err := Verify(bytes.NewReader(b), int64(len(b)), lookup); err != nil {
				f.Fatalf("a seed sealed with the key: %v", err)
			}
			good[string(b)] = true
			f.Add(b)
			f.Add(b[:len(b)/2])
			f.Add(append(bytes.Clone(b), 0))
		}
	}
	f.Add([]byte("QZBATCH1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := Verify(bytes.NewReader(data), int64(len(data)), lookup)
		if err == nil {
			if !good[string(data)] {
				t.Fatalf("accepted %d bytes that are not a batch this key sealed", len(data))
			}
			body, err := info.Body(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, body); err != nil || n != info.Header.BodyLen {
				t.Fatalf("body of a verified batch: %d bytes, %v", n, err)
			}
			return
		}
		if !errors.Is(err, ErrRejected) {
			t.Fatalf("damaged input not reported as a rejection: %v", err)
		}
	})
}

// rowsBatch returns a sealed batch of two upserts and a delete.
func rowsBatch(t testing.TB, key Signer, compression string) []byte {
	t.Helper()
	cols := []Column{{Name: "id", Type: TypeInt}, {Name: "名称", Type: TypeString, Length: 20, Nullable: true}}
	var w RowWriter
	w.Upsert([][]byte{[]byte("1"), []byte("市公安局")})
	w.Upsert([][]byte{[]byte("2"), nil})
	w.Delete([][]byte{[]byte("3")})
	h := testHeader(nil, w.Bytes(), compression)
	h.Kind, h.Rows = KindRows, 3
	h.Schema = &Schema{Table: "people", Columns: cols, Key: []string{"id"}, Fingerprint: SchemaFingerprint(cols, []string{"id"})}
	return writeBatch(t, h, w.Bytes(), key)
}

// fixedKey returns a seal key derived from name, the same in every process.
func fixedKey(t testing.TB, name string) *seal.PrivateKey {
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
