package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
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

// putEntry describes data as a whole file at rel.
func putEntry(rel string, data []byte, mode uint32) batch.FileEntry {
	sum := sha256.Sum256(data)
	hx := hex.EncodeToString(sum[:])
	return batch.FileEntry{Op: "put", Path: rel, Size: int64(len(data)), Mode: mode, ModTime: time.Now().Add(-time.Hour),
		SHA256: hx, ChunkSize: 1 << 20, Chunks: 1, Length: int64(len(data)), ChunkSHA256: hx}
}

func applyOne(s *Sink, e batch.FileEntry, data []byte, ch *connectors.Changes) error {
	h := batch.Header{Kind: "files", Files: []batch.FileEntry{e}, BodyLen: int64(len(data))}
	return s.Apply(context.Background(), &h, bytes.NewReader(data), nil, ch)
}

// TestSinkNeverFollowsLinks: symlinks planted in the target folder (by a
// local user who can write it) redirect no write, no delete and no
// destruction outside it.
func TestSinkNeverFollowsLinks(t *testing.T) {
	dst, out := t.TempDir(), t.TempDir()
	victim := filepath.Join(out, "victim.txt")
	if err := os.WriteFile(victim, []byte("not yours"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := NewSink(dst, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	os.Symlink(out, filepath.Join(dst, "sub"))
	os.Symlink(victim, filepath.Join(dst, "a.txt"))

	// A folder of the path is a link: refused, nothing written through it.
	err = applyOne(s, putEntry("sub/x.txt", []byte("data"), 0o644), []byte("data"), nil)
	if !errors.Is(err, errLink) || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("put through a linked folder: %v, want a refusal naming the link", err)
	}
	if _, err := os.Lstat(filepath.Join(out, "x.txt")); err == nil {
		t.Error("a put wrote through a symlinked folder")
	}
	// The target itself is a link: replaced by the file, the link's
	// target untouched.
	if err := applyOne(s, putEntry("a.txt", []byte("new"), 0o644), []byte("new"), nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "a.txt")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("a.txt is not a regular file after the put: %v %v", fi, err)
	}
	// A delete and a destruction through the linked folder leave the file
	// outside alone.
	if err := applyOne(s, batch.FileEntry{Op: "delete", Path: "sub/victim.txt"}, nil, nil); err != nil {
		t.Fatalf("delete through a linked folder: %v", err)
	}
	st := connectorstest.NewMemState("sink")
	var ch connectors.Changes
	ch.Put(keyGot+"sub/victim.txt", []byte("x"))
	st.Commit(&ch)
	if _, err := s.Destroy(context.Background(), "g-1", st, &connectors.Changes{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "not yours" {
		t.Errorf("the file outside the target changed: %q %v", b, err)
	}
	// A verification does not read through links either.
	os.Symlink(victim, filepath.Join(dst, "b.txt"))
	sum := sha256.Sum256([]byte("not yours"))
	diff, err := s.compare(context.Background(), strings.NewReader(`{"path":"b.txt","size":9,"sha256":"`+hex.EncodeToString(sum[:])+`"}`+"\n"))
	if err != nil || !slices.Contains(diff, "differs: b.txt") {
		t.Errorf("compare through a link: %v %v, want b.txt to differ", diff, err)
	}
	// A link in place of the temporary folder is refused at start.
	dst2 := t.TempDir()
	os.Symlink(out, filepath.Join(dst2, TempDir))
	if _, err := NewSink(dst2, quiet); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Errorf("NewSink with %s a symlink: %v", TempDir, err)
	}
}

// TestSinkModes: received files and the folders made for them get the
// sink's modes, not the provider's bits, whatever the umask; new folders
// are made in their parent.
func TestSinkModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, tc := range []struct {
		name      string
		yaml      string
		file, dir fs.FileMode
	}{
		{"defaults", "", 0o640, 0o750},
		{"configured", "file_mode: 0600\ndir_mode: 0o700\n", 0o600, 0o700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := t.TempDir()
			cfg := NewSinkConfig()
			if err := yaml.Unmarshal([]byte("path: "+dst+"\n"+tc.yaml), cfg); err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			sk, err := cfg.OpenSink(quiet)
			if err != nil {
				t.Fatal(err)
			}
			defer sk.Close()
			s := sk.(*Sink)
			if err := applyOne(s, putEntry("d/e/f.txt", []byte("x"), 0o777), []byte("x"), nil); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				rel  string
				want fs.FileMode
			}{{"d", tc.dir}, {"d/e", tc.dir}, {"d/e/f.txt", tc.file}} {
				fi, err := os.Stat(filepath.Join(dst, c.rel))
				if err != nil || fi.Mode().Perm() != c.want {
					t.Errorf("%s: mode %v (%v), want %v", c.rel, fi.Mode().Perm(), err, c.want)
				}
			}
		})
	}
}

func TestSinkModeConfig(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want string // substring of the error; "" means valid
	}{
		{"file_mode: 0644", ""},
		{"file_mode: '0660'", ""},
		{"file_mode: 0o600", ""},
		{"file_mode: 0999", "octal"},
		{"file_mode: rw-r-----", "octal"},
		{"file_mode: 01777", "octal"},
		{"file_mode: 0440", "owner (the agent) read and write"},
		{"dir_mode: 0600", "owner (the agent) list"},
	} {
		cfg := NewSinkConfig()
		err := yaml.Unmarshal([]byte("path: /srv/in\n"+tc.yaml), cfg)
		if err == nil {
			err = cfg.Validate()
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.yaml, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
