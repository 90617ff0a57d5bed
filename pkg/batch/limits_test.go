package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// bombHeader is a sealed-looking files header declaring one file of size
// bytes in a single piece, as the 2 GiB bomb of issue 14 did.
func bombHeader(size int64) Header {
	sum := strings.Repeat("ab", 32)
	e := FileEntry{Op: OpPut, Path: "bomb.bin", Size: size, Mode: 0o644, SHA256: sum,
		ChunkSize: size, Chunks: 1, Length: size, ChunkSHA256: sum}
	return testHeader([]FileEntry{e}, nil, CompressionZstd)
}

func TestLimitsCheck(t *testing.T) {
	l := DefaultLimits
	tests := []struct {
		name string
		edit func(h *Header)
		want string // substring of the error; "" means accepted
	}{
		{"a chunk of the largest size", func(h *Header) {
			*h = bombHeader(l.MaxPieceLen)
			h.BodyLen = l.MaxPieceLen
		}, ""},
		{"the 2 GiB single-chunk bomb", func(h *Header) { *h = bombHeader(2 << 30); h.BodyLen = 2 << 30 }, "in one piece"},
		{"body longer than the limit", func(h *Header) { *h = bombHeader(1 << 20); h.BodyLen = l.MaxBodyLen + 1 }, "body_len"},
		{"chunk size beyond the limit", func(h *Header) {
			*h = bombHeader(1 << 20)
			h.Files[0].ChunkSize = l.MaxPieceLen + 1
		}, "chunk_size"},
		{"whole file beyond the limit", func(h *Header) {
			*h = bombHeader(1 << 20)
			h.Files[0].Size = l.MaxFileSize + 1
		}, "for one file"},
		{"deletes carry nothing", func(h *Header) {
			*h = testHeader([]FileEntry{{Op: OpDelete, Path: "x"}}, nil, CompressionNone)
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Header
			tc.edit(&h)
			err := l.Check(&h)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatal("accepted")
			case !errors.Is(err, ErrLimit) || !errors.Is(err, ErrRejected):
				t.Fatalf("%v: does not wrap ErrLimit and ErrRejected", err)
			case !strings.Contains(err.Error(), tc.want):
				t.Fatalf("%v: want %q in it", err, tc.want)
			}
		})
	}
}

// TestRowLimit: a row whose values add up to more than the limit is refused
// as a rejection before the reader allocates for it, whether one value
// declares it all or several values reach it together.
func TestRowLimit(t *testing.T) {
	s := &Schema{Columns: []Column{{Name: "id", Type: TypeInt}, {Name: "a", Type: TypeBlob}, {Name: "b", Type: TypeBlob}}, Key: []string{"id"}}
	t.Run("one value declares more", func(t *testing.T) {
		// A length prefix of 1 GiB with no bytes behind it: a reader that
		// trusted it would try to read (and grow its buffer) first.
		body := []byte{RowUpsert, 2, '1'}
		body = binary.AppendUvarint(body, 1<<30+1)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := NewRowReader(bytes.NewReader(body), s).Next()
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrLimit) || !errors.Is(err, ErrRejected) {
			t.Fatalf("got %v, want a rejection wrapping ErrLimit", err)
		}
		if a := after.TotalAlloc - before.TotalAlloc; a > 4<<20 {
			t.Errorf("allocated %d MiB for a refused row", a>>20)
		}
	})
	t.Run("values together", func(t *testing.T) {
		var w RowWriter
		half := bytes.Repeat([]byte{7}, 600)
		w.Upsert([][]byte{[]byte("1"), half, half[:100]})
		w.Upsert([][]byte{[]byte("2"), half, half})
		rr := NewRowReader(bytes.NewReader(w.Bytes()), s)
		rr.maxRow = 1000
		if _, err := rr.Next(); err != nil {
			t.Fatalf("row of 701 bytes under a 1000 byte limit: %v", err)
		}
		if _, err := rr.Next(); !errors.Is(err, ErrLimit) {
			t.Fatalf("row of 1201 bytes under a 1000 byte limit: %v", err)
		}
	})
}

// TestZstdWindowBounded: a body compressed with a window larger than the
// reader accepts is refused as corrupt, not decoded with that window.
func TestZstdWindowBounded(t *testing.T) {
	const size = 40 << 20
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < size; i += 8 << 10 {
		// Incompressible blocks that repeat far apart: only a window
		// wider than the limit can refer back to them.
		if i < 16<<20 {
			for j := i; j < i+8<<10; j++ {
				data[j] = byte(rng.Uint32())
			}
		} else {
			copy(data[i:i+8<<10], data[i-16<<20:])
		}
	}
	var comp bytes.Buffer
	enc, err := zstd.NewWriter(&comp, zstd.WithWindowSize(64<<20), zstd.WithEncoderConcurrency(1), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(data)
	enc.Close()

	key := newKey(t)
	h := testHeader([]FileEntry{{Op: OpVerify, Size: 1, Length: size, ChunkSHA256: strings.Repeat("ab", 32)}}, nil, CompressionZstd)
	h.BodyLen = size
	// Lay the batch out by hand: the Writer would compress with its own,
	// small window.
	w, err := NewWriter(io.Discard, h, key)
	if err != nil {
		t.Fatal(err)
	}
	h = w.Header()
	w.Close()
	raw := rawBatch(t, h, comp.Bytes(), key)
	info, err := Verify(bytes.NewReader(raw), int64(len(raw)), lookupFor(key))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := info.Body(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "window") {
		t.Fatalf("body with a 64 MiB window: %v, want ErrCorrupt naming the window", err)
	}
}

// rawBatch lays out a batch around a stored body exactly as given.
func rawBatch(t *testing.T, h Header, stored []byte, s Signer) []byte {
	t.Helper()
	hj, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	b := append([]byte(magic), binary.BigEndian.AppendUint32(nil, uint32(len(hj)))...)
	b = append(append(b, hj...), stored...)
	digest := sha256.Sum256(b)
	b, err = appendTrailer(b, int64(len(stored)), digest[:], s.Sign(SealDomain, digest[:]))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHeaderLimitBeforeParse: a header longer than the receiver accepts is
// refused from the framing alone, before it is read or parsed (parsing a
// header of many small entries costs tens of times its size), although the
// format allows it and the seal is good.
func TestHeaderLimitBeforeParse(t *testing.T) {
	key := newKey(t)
	h := testHeader(nil, nil, CompressionNone)
	for i := 0; len(h.Files)*40 < int(DefaultLimits.MaxHeaderLen)+(1<<20); i++ {
		h.Files = append(h.Files, FileEntry{Op: OpDelete, Path: fmt.Sprintf("%08d", i)})
	}
	path := filepath.Join(t.TempDir(), "many.qzb")
	if err := os.WriteFile(path, writeBatch(t, h, nil, key), 0o600); err != nil {
		t.Fatal(err)
	}
	h.Files = nil
	if _, err := VerifyFile(path, lookupFor(key)); err != nil {
		t.Fatalf("the format accepts it: %v", err)
	}
	var err error
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = DefaultLimits.VerifyFile(path, lookupFor(key))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrLimit) || !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "header of") {
		t.Fatalf("got %v, want a rejection wrapping ErrLimit naming the header", err)
	}
	if a := after.TotalAlloc - before.TotalAlloc; a > 1<<20 {
		t.Errorf("allocated %d KiB to refuse the header", a>>10)
	}
	// Within the limits, Limits.VerifyFile is VerifyFile plus Check.
	small := testHeader([]FileEntry{{Op: OpDelete, Path: "x"}}, nil, CompressionNone)
	if err := os.WriteFile(path, writeBatch(t, small, nil, key), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := DefaultLimits.VerifyFile(path, lookupFor(key)); err != nil {
		t.Fatalf("a small batch: %v", err)
	}
}
