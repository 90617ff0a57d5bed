package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

// allocated returns the bytes f allocates.
func allocated(t *testing.T, f func()) uint64 {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	a := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %.1f MiB", float64(a)/(1<<20))
	return a
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestSinkRefusesBomb: a batch declaring a 2 GiB file in one piece (what a
// 400 KB zstd body can decompress to) is refused as a rejection before the
// sink allocates or reads anything for it.
func TestSinkRefusesBomb(t *testing.T) {
	const size = 2 << 30
	s, err := NewSink(t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	sum := strings.Repeat("ab", 32)
	var files []batch.FileEntry
	for i := range smallWorkers {
		files = append(files, batch.FileEntry{Op: "put", Path: "bomb" + strconv.Itoa(i), Size: size, Mode: 0o644,
			SHA256: sum, ChunkSize: size, Chunks: 1, Length: size, ChunkSHA256: sum})
	}
	h := batch.Header{Kind: "files", Files: files, BodyLen: smallWorkers * size}
	var aerr error
	if a := allocated(t, func() {
		aerr = s.Apply(context.Background(), &h, io.LimitReader(zeros{}, h.BodyLen), nil, nil)
	}); a > 16<<20 {
		t.Errorf("Apply allocated %d MiB for a refused batch", a>>20)
	}
	if !errors.Is(aerr, batch.ErrLimit) || !errors.Is(aerr, batch.ErrRejected) {
		t.Fatalf("Apply: %v, want a rejection wrapping batch.ErrLimit", aerr)
	}
}

// TestSinkStreamsLargeFiles: whole files larger than smallFile are written
// from the body as it streams, not read into memory for a worker, so the
// memory a batch takes does not grow with the sizes it declares.
func TestSinkStreamsLargeFiles(t *testing.T) {
	const n, size = smallWorkers, 4 << 20
	dst := t.TempDir()
	s, err := NewSink(dst, quiet)
	if err != nil {
		t.Fatal(err)
	}
	var files []batch.FileEntry
	var body bytes.Buffer
	for i := range n {
		data := pattern(size, byte(i))
		sum := sha256.Sum256(data)
		hx := hex.EncodeToString(sum[:])
		files = append(files, batch.FileEntry{Op: "put", Path: "big" + strconv.Itoa(i), Size: size, Mode: 0o644, ModTime: time.Now(),
			SHA256: hx, ChunkSize: size, Chunks: 1, Length: size, ChunkSHA256: hx})
		body.Write(data)
	}
	h := batch.Header{Kind: "files", Files: files, BodyLen: int64(body.Len())}
	if a := allocated(t, func() {
		if err := s.Apply(context.Background(), &h, bytes.NewReader(body.Bytes()), nil, nil); err != nil {
			t.Fatal(err)
		}
	}); a > size {
		t.Errorf("Apply allocated %d MiB for %d files of %d MiB", a>>20, n, size>>20)
	}
	for i := range n {
		got, err := os.ReadFile(filepath.Join(dst, "big"+strconv.Itoa(i)))
		if err != nil || !bytes.Equal(got, pattern(size, byte(i))) {
			t.Errorf("big%d did not arrive whole: %v", i, err)
		}
	}
}
