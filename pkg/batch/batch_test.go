package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

type tfile struct {
	path string
	data []byte
}

// filesBody lays files out as chunked put entries (then deletes) and returns
// the entries and the body they describe.
func filesBody(chunkSize int64, deletes []string, files ...tfile) ([]FileEntry, []byte) {
	var entries []FileEntry
	var body bytes.Buffer
	mtime := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	for _, f := range files {
		size := int64(len(f.data))
		sum := sha256.Sum256(f.data)
		chunks := max(1, (size+chunkSize-1)/chunkSize)
		for c := range chunks {
			off := c * chunkSize
			piece := f.data[off:min(off+chunkSize, size)]
			csum := sha256.Sum256(piece)
			entries = append(entries, FileEntry{
				Op: OpPut, Path: f.path, Size: size, Mode: 0o640, ModTime: mtime,
				SHA256: hex.EncodeToString(sum[:]), ChunkSize: chunkSize, Chunks: int(chunks),
				Chunk: int(c), Offset: off, Length: int64(len(piece)), ChunkSHA256: hex.EncodeToString(csum[:]),
			})
			body.Write(piece)
		}
	}
	for _, p := range deletes {
		entries = append(entries, FileEntry{Op: OpDelete, Path: p})
	}
	return entries, body.Bytes()
}

func testHeader(entries []FileEntry, body []byte, compression string) Header {
	return Header{
		Kind:        KindFiles,
		Resource:    "res-人口统计",
		Grant:       "grant-7",
		Provider:    "node-provider",
		Consumer:    "node-consumer",
		Sequence:    1,
		Created:     time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC),
		Compression: compression,
		BodyLen:     int64(len(body)),
		Files:       entries,
	}
}

func newKey(t testing.TB) *seal.PrivateKey {
	t.Helper()
	k, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// lookupFor trusts exactly the given keys.
func lookupFor(keys ...*seal.PrivateKey) func(string) (seal.PublicKey, error) {
	return func(id string) (seal.PublicKey, error) {
		for _, k := range keys {
			if k.KeyID() == id {
				return k.Public(), nil
			}
		}
		return seal.PublicKey{}, ErrUnknownKey
	}
}

func writeBatch(t testing.TB, h Header, body []byte, s Signer) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(buf.Len()) {
		t.Fatalf("Size %d, wrote %d", w.Size(), buf.Len())
	}
	return buf.Bytes()
}

func readBody(t testing.TB, info *Info, r io.ReaderAt) []byte {
	t.Helper()
	rc, err := info.Body(r)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func bigBody(t testing.TB) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text bytes.Buffer
	for i := 0; text.Len() < 3<<20; i++ {
		fmt.Fprintf(&text, "%d,张三%d,110101199001011234,北京市东城区,%d\n", i, i%97, i*31)
	}
	return append(random, text.Bytes()...)
}

func TestRoundTrip(t *testing.T) {
	key := newKey(t)
	data := bigBody(t)
	entries, body := filesBody(1<<20, []string{"旧/删除.txt"},
		tfile{"报表/二〇二六年.xlsx", data},
		tfile{"empty.txt", nil},
		tfile{"a/b/c.csv", []byte("x,y\n1,2\n")},
	)
	for _, tc := range []struct {
		compression string
		level       int
	}{
		{CompressionNone, 0},
		{CompressionZstd, 0}, // default level
		{CompressionZstd, LevelFastest},
		{CompressionZstd, LevelBetter},
		{CompressionZstd, LevelBest},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.compression, tc.level), func(t *testing.T) {
			h := testHeader(entries, body, tc.compression)
			h.Level = tc.level
			path := filepath.Join(t.TempDir(), "000001.qzb")
			size, err := Create(path, h, bytes.NewReader(body), key)
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != size {
				t.Fatalf("Create returned size %d, file has %d", size, st.Size())
			}
			info, err := VerifyFile(path, lookupFor(key))
			if err != nil {
				t.Fatal(err)
			}
			if info.Header.SealKeyID != key.KeyID() || info.Header.SealAlg != seal.AlgEd25519 ||
				info.Header.DigestAlg != DigestSHA256 || info.Header.Version != FormatVersion {
				t.Fatalf("filled fields: %+v", info.Header)
			}
			if tc.compression == CompressionZstd {
				if tc.level == 0 && info.Header.Level != LevelDefault {
					t.Fatalf("level %d, want default %d", info.Header.Level, LevelDefault)
				}
				// Half the body is highly compressible text.
				if info.StoredLen > int64(len(body))*3/4 {
					t.Fatalf("zstd stored %d of %d bytes", info.StoredLen, len(body))
				}
			}
			if len(info.Header.Files) != len(entries) || !info.Header.Files[0].ModTime.Equal(entries[0].ModTime) {
				t.Fatalf("file entries changed: %+v", info.Header.Files[0])
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := readBody(t, info, f); !bytes.Equal(got, body) {
				t.Fatalf("body differs: got %d bytes, want %d", len(got), len(body))
			}
			entriesLeft, _ := os.ReadDir(filepath.Dir(path))
			if len(entriesLeft) != 1 {
				t.Fatalf("temporary files left: %v", entriesLeft)
			}
		})
	}
}

func TestWriterDigestMatchesInfo(t *testing.T) {
	key := newKey(t)
	entries, body := filesBody(8, nil, tfile{"a.txt", []byte("hello, world")})
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testHeader(entries, body, CompressionZstd), key)
	if err != nil {
		t.Fatal(err)
	}
	if w.Digest() != nil {
		t.Fatal("digest before Close")
	}
	w.Write(body)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := Verify(bytes.NewReader(buf.Bytes()), int64(buf.Len()), lookupFor(key))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.Digest(), info.Digest) || info.DigestHex() != hex.EncodeToString(w.Digest()) {
		t.Fatal("writer digest differs from verified digest")
	}
}

func smallBatch(t testing.TB, key Signer, compression string) []byte {
	t.Helper()
	entries, body := filesBody(16, []string{"gone.txt"},
		tfile{"报表/二〇二六年.xlsx", []byte("季度,收入\n一,100\n二,200\n")},
		tfile{"e", nil})
	return writeBatch(t, testHeader(entries, body, compression), body, key)
}

// TestBitFlips flips every bit of small batches: each flip must make Verify
// reject the batch (not merely fail with an I/O error).
func TestBitFlips(t *testing.T) {
	key := newKey(t)
	lookup := lookupFor(key)
	for _, compression := range []string{CompressionNone, CompressionZstd} {
		t.Run(compression, func(t *testing.T) {
			orig := smallBatch(t, key, compression)
			if _, err := Verify(bytes.NewReader(orig), int64(len(orig)), lookup); err != nil {
				t.Fatalf("unmodified batch: %v", err)
			}
			b := bytes.Clone(orig)
			for i := range b {
				for bit := range 8 {
					b[i] ^= 1 << bit
					_, err := Verify(bytes.NewReader(b), int64(len(b)), lookup)
					if err == nil {
						t.Fatalf("flip of byte %d bit %d (of %d bytes) verified", i, bit, len(b))
					}
					if !errors.Is(err, ErrRejected) {
						t.Fatalf("flip of byte %d bit %d: error %v does not wrap ErrRejected", i, bit, err)
					}
					b[i] ^= 1 << bit
				}
			}
			t.Logf("%d bits flipped", 8*len(b))
		})
	}
}

// TestBitFlipsLarge samples bits of a batch with a bigger compressed body.
func TestBitFlipsLarge(t *testing.T) {
	key := newKey(t)
	data := bigBody(t)[:1<<20]
	entries, body := filesBody(256<<10, nil, tfile{"big.bin", data})
	b := writeBatch(t, testHeader(entries, body, CompressionZstd), body, key)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 300 {
		i, bit := rng.IntN(len(b)), rng.IntN(8)
		b[i] ^= 1 << bit
		if _, err := Verify(bytes.NewReader(b), int64(len(b)), lookupFor(key)); !errors.Is(err, ErrRejected) {
			t.Fatalf("flip of byte %d bit %d: %v", i, bit, err)
		}
		b[i] ^= 1 << bit
	}
}

func TestTruncated(t *testing.T) {
	key := newKey(t)
	b := smallBatch(t, key, CompressionZstd)
	for n := range len(b) {
		_, err := Verify(bytes.NewReader(b[:n]), int64(n), lookupFor(key))
		if !errors.Is(err, ErrCorrupt) || !errors.Is(err, ErrRejected) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	// Extra bytes appended are as bad as missing ones.
	long := append(bytes.Clone(b), 0)
	if _, err := Verify(bytes.NewReader(long), int64(len(long)), lookupFor(key)); !errors.Is(err, ErrRejected) {
		t.Fatalf("appended byte: %v", err)
	}

	path := filepath.Join(t.TempDir(), "cut.qzb")
	if err := os.WriteFile(path, b[:len(b)-1], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(path, lookupFor(key)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated file: %v", err)
	}
}

// forger claims another key's ID but signs with its own key.
type forger struct {
	claim *seal.PrivateKey
	real  *seal.PrivateKey
}

func (f forger) Algorithm() string { return f.claim.Algorithm() }
func (f forger) KeyID() string     { return f.claim.KeyID() }
func (f forger) Sign(d string, m []byte) []byte {
	return f.real.Sign(d, m)
}

func TestWrongKey(t *testing.T) {
	provider := newKey(t)
	stranger := newKey(t)
	b := smallBatch(t, provider, CompressionNone)
	forged := smallBatch(t, forger{claim: provider, real: stranger}, CompressionNone)
	ioErr := errors.New("key store offline")

	tests := []struct {
		name   string
		batch  []byte
		lookup func(string) (seal.PublicKey, error)
		want   error // nil: must not be a rejection
	}{
		{"key not trusted", b, lookupFor(stranger), ErrUnknownKey},
		{"lookup returns another key", b, func(string) (seal.PublicKey, error) { return stranger.Public(), nil }, seal.ErrBadSignature},
		{"lookup returns zero key", b, func(string) (seal.PublicKey, error) { return seal.PublicKey{}, nil }, seal.ErrBadSignature},
		{"forged key id", forged, lookupFor(provider, stranger), seal.ErrBadSignature},
		{"lookup I/O error", b, func(string) (seal.PublicKey, error) { return seal.PublicKey{}, ioErr }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(bytes.NewReader(tc.batch), int64(len(tc.batch)), tc.lookup)
			if err == nil {
				t.Fatal("verified")
			}
			if tc.want == nil {
				if errors.Is(err, ErrRejected) || !errors.Is(err, ioErr) {
					t.Fatalf("err = %v, want the lookup error, not a rejection", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrRejected) {
				t.Fatalf("err = %v, want %v and ErrRejected", err, tc.want)
			}
		})
	}
}

func TestUnsupportedVersion(t *testing.T) {
	key := newKey(t)
	b := smallBatch(t, key, CompressionNone)

	v2magic := bytes.Clone(b)
	v2magic[7] = '2'
	v2header := bytes.Replace(b, []byte(`"version":1`), []byte(`"version":2`), 1)
	for name, bb := range map[string][]byte{"magic": v2magic, "header": v2header} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadInfo(bytes.NewReader(bb), int64(len(bb)))
			if !errors.Is(err, ErrUnsupported) || !errors.Is(err, ErrRejected) {
				t.Fatalf("err = %v, want ErrUnsupported", err)
			}
		})
	}
}

func TestWriterBodyLength(t *testing.T) {
	key := newKey(t)
	entries, body := filesBody(4, nil, tfile{"a", []byte("0123456789")})
	h := testHeader(entries, body, CompressionZstd)

	w, err := NewWriter(io.Discard, h, key)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(body[:5])
	if err := w.Close(); err == nil {
		t.Fatal("short body accepted")
	}
	if w.Digest() != nil {
		t.Fatal("digest after failed Close")
	}

	w, _ = NewWriter(io.Discard, h, key)
	if _, err := w.Write(append(bytes.Clone(body), 'x')); err == nil {
		t.Fatal("long body accepted")
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after failed Write succeeded")
	}

	// Create leaves nothing behind when the body is short.
	dir := t.TempDir()
	path := filepath.Join(dir, "b.qzb")
	if _, err := Create(path, h, bytes.NewReader(body[:3]), key); err == nil {
		t.Fatal("Create with short body succeeded")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("files left behind: %v", left)
	}
}

func TestExactReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		have int
		want int64
		ok   bool
	}{
		{"exact", 10, 10, true},
		{"empty", 0, 0, true},
		{"short", 9, 10, false},
		{"long", 11, 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &exactReader{r: bytes.NewReader(make([]byte, tc.have)), left: tc.want}
			got, err := io.ReadAll(r)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if tc.ok && int64(len(got)) != tc.want {
				t.Fatalf("read %d bytes", len(got))
			}
		})
	}
}

func TestInspect(t *testing.T) {
	key := newKey(t)
	b := smallBatch(t, key, CompressionZstd)
	info, err := Verify(bytes.NewReader(b), int64(len(b)), lookupFor(key))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	Inspect(&out, info, nil)
	for _, want := range []string{
		"res-人口统计", "grant-7", "node-provider → node-consumer", "sequence:", "2026-03-01T09:30:00Z",
		"zstd level 2", "sha256:" + info.DigestHex(), key.KeyID(), "报表/二〇二六年.xlsx", "2/2", "gone.txt",
		"delete", "seal: OK",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	Inspect(&out, info, errors.New("digest mismatch"))
	if !strings.HasSuffix(out.String(), "seal: FAILED: digest mismatch\n") {
		t.Errorf("failed verdict:\n%s", out.String())
	}
	out.Reset()
	Inspect(&out, nil, ErrCorrupt)
	if out.String() != "seal: FAILED: batch corrupt\n" {
		t.Errorf("nil info: %q", out.String())
	}
}

// patternReader yields n bytes of mildly compressible data without holding
// them in memory.
type patternReader struct {
	n, off int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := uint64(p.off + int64(i))
		b[i] = byte(x ^ x>>7 ^ x>>13*0x9e37)
	}
	p.off += int64(len(b))
	return len(b), nil
}

// TestStreamingMemory checks that writing and reading a batch does not hold
// the body in memory: total allocation stays far below the body size.
func TestStreamingMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 64 MiB")
	}
	const size = 64 << 20
	key := newKey(t)
	// One file of size bytes; chunk digests are not checked by this package,
	// so any well-formed digest does.
	const chunk = 16 << 20
	fake := strings.Repeat("ab", 32)
	var entries []FileEntry
	for c := range size / chunk {
		entries = append(entries, FileEntry{Op: OpPut, Path: "big.bin", Size: size, SHA256: fake,
			ChunkSize: chunk, Chunks: size / chunk, Chunk: c, Offset: int64(c) * chunk, Length: chunk, ChunkSHA256: fake})
	}
	h := testHeader(entries, nil, CompressionZstd)
	h.BodyLen = size
	path := filepath.Join(t.TempDir(), "big.qzb")

	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		a := after.TotalAlloc - before.TotalAlloc
		t.Logf("allocated %.1f MiB", float64(a)/(1<<20))
		return a
	}
	const limit = 24 << 20
	if a := allocated(func() {
		if _, err := Create(path, h, &patternReader{n: size}, key); err != nil {
			t.Fatal(err)
		}
	}); a > limit {
		t.Errorf("Create allocated %d MiB for a %d MiB body", a>>20, size>>20)
	}
	if a := allocated(func() {
		info, err := VerifyFile(path, lookupFor(key))
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		rc, err := info.Body(f)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		n, err := io.CopyBuffer(io.Discard, rc, make([]byte, 64<<10))
		if err != nil || n != size {
			t.Fatalf("read %d bytes: %v", n, err)
		}
	}); a > limit {
		t.Errorf("verify and read allocated %d MiB for a %d MiB body", a>>20, size>>20)
	}
}
