package batch

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzVerify feeds arbitrary bytes to the reader: it must never panic or
// hang, and whatever is not the original sealed batch must be rejected
// rather than accepted. make test runs the seed corpus; go test -fuzz
// explores further.
func FuzzVerify(f *testing.F) {
	key := newKey(f)
	lookup := lookupFor(key)
	good := map[string]bool{}
	for _, c := range []string{CompressionNone, CompressionZstd} {
		b := smallBatch(f, key, c)
		good[string(b)] = true
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(append(bytes.Clone(b), 0))
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
