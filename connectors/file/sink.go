package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
)

// Sink writes received files into a folder.
type Sink struct {
	root string
	tmp  string
	log  *slog.Logger

	// dirty holds the folders whose entries changed in the batch being
	// applied; each is synced once, before Apply returns (and so before
	// the agent commits the batch), rather than once per file.
	mu    sync.Mutex
	dirty map[string]bool
}

var _ connectors.Sink = (*Sink)(nil)

// NewSink prepares root and its temporary folder.
func NewSink(root string, log *slog.Logger) (*Sink, error) {
	tmp := filepath.Join(root, TempDir)
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return nil, fmt.Errorf("prepare target folder: %w", err)
	}
	return &Sink{root: root, tmp: tmp, log: log}, nil
}

// Close does nothing; the sink holds no open files between batches.
func (s *Sink) Close() error { return nil }

// ErrMismatch means received content does not match its declared hash.
var ErrMismatch = errors.New("content does not match its hash")

func (s *Sink) target(rel string) (string, error) {
	if rel == "" || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") {
		return "", fmt.Errorf("unsafe path %q", rel)
	}
	clean := filepath.Clean(filepath.FromSlash(rel))
	if clean == "." || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) || strings.Split(clean, string(filepath.Separator))[0] == TempDir {
		return "", fmt.Errorf("unsafe path %q", rel)
	}
	return filepath.Join(s.root, clean), nil
}

// tempPrefix names every temporary file of one target path; the suffix names
// the version being assembled.
func tempPrefix(rel string) string {
	h := sha256.Sum256([]byte(rel))
	return hex.EncodeToString(h[:8]) + "-"
}

func (s *Sink) tempName(rel, fileSHA string) string {
	return filepath.Join(s.tmp, tempPrefix(rel)+fileSHA[:16]+".part")
}

// dropTemps removes unfinished versions of rel other than keep.
func (s *Sink) dropTemps(rel, keep string) {
	matches, _ := filepath.Glob(filepath.Join(s.tmp, tempPrefix(rel)+"*.part"))
	for _, m := range matches {
		if m != keep {
			os.Remove(m)
		}
	}
}

// Apply implements connectors.Sink. Every step is idempotent: writing a
// chunk again writes the same bytes at the same offset, and a final rename
// already done is recognised by the target's hash.
func (s *Sink) Apply(ctx context.Context, h *batch.Header, body io.Reader, st connectors.State, ch *connectors.Changes) error {
	if h.Kind != "files" {
		return fmt.Errorf("file sink cannot apply a %q batch", h.Kind)
	}
	if err := batch.DefaultLimits.Check(h); err != nil {
		return err
	}
	if st != nil && ch != nil {
		// Completed files kept from batches now committed are not needed
		// any more (see finish).
		err := st.Scan(keyDone, func(key string, _ []byte) error {
			os.Remove(filepath.Join(s.tmp, strings.TrimPrefix(key, keyDone)))
			ch.Delete(key)
			return nil
		})
		if err != nil {
			return err
		}
	}
	s.dirty = map[string]bool{}
	defer func() { s.dirty = nil }()
	if err := s.applyFiles(ctx, h, body, ch); err != nil {
		return err
	}
	for d := range s.dirty {
		if err := fsutil.SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// smallWorkers is how many whole small files of a batch are written (and
// fsynced) at once: the file system commits concurrent fsyncs together.
const smallWorkers = 8

// smallFile is the largest file read into memory to be written by a worker;
// larger ones stream from the body in order through a small buffer. It
// bounds what files in flight hold at (smallWorkers+1)*smallFile, whatever
// sizes a batch declares.
const smallFile = 1 << 20

func (s *Sink) applyFiles(ctx context.Context, h *batch.Header, body io.Reader, ch *connectors.Changes) error {
	var mu sync.Mutex // guards ch while small files are written in parallel
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(smallWorkers)
	for i := range h.Files {
		if err := gctx.Err(); err != nil {
			if werr := g.Wait(); werr != nil {
				return werr // the worker's error, not the cancellation it caused
			}
			return err
		}
		e := &h.Files[i]
		if e.Op == "put" && e.Chunks == 1 && e.Length <= smallFile {
			// A whole file: read it here (the body is a stream), write it
			// in a worker.
			data := make([]byte, e.Length)
			if _, err := io.ReadFull(body, data); err != nil {
				g.Wait()
				return fmt.Errorf("put %s: %w", e.Path, err)
			}
			g.Go(func() error {
				var local connectors.Changes
				if err := s.put(e, bytes.NewReader(data), &local); err != nil {
					return fmt.Errorf("put %s: %w", e.Path, err)
				}
				if ch != nil {
					mu.Lock()
					defer mu.Unlock()
					local.Each(func(k string, v []byte) error {
						if v == nil {
							ch.Delete(k)
						} else {
							ch.Put(k, v)
						}
						return nil
					})
					ch.Put(keyGot+e.Path, []byte(e.SHA256))
				}
				return nil
			})
			continue
		}
		// Anything else goes in order, after the files before it.
		if err := g.Wait(); err != nil {
			return err
		}
		g, gctx = errgroup.WithContext(ctx)
		g.SetLimit(smallWorkers)
		var err error
		switch e.Op {
		case "put":
			err = s.put(e, io.LimitReader(body, e.Length), ch)
			if err == nil && ch != nil && e.Chunk == e.Chunks-1 {
				ch.Put(keyGot+e.Path, []byte(e.SHA256))
			}
		case "delete":
			err = s.delete(e)
			if err == nil && ch != nil {
				ch.Delete(keyGot + e.Path)
			}
		case batch.OpVerify:
			var diff []string
			lr := io.LimitReader(body, e.Length)
			diff, err = s.compare(ctx, lr)
			io.Copy(io.Discard, lr)
			if err == nil && ch != nil {
				ch.MismatchFiles = diff
			}
			s.log.Info("verify: compared the folder with the provider's manifest", "files", e.Size, "differing", len(diff))
		default:
			err = fmt.Errorf("unknown file operation %q", e.Op)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", e.Op, e.Path, err)
		}
	}
	return g.Wait()
}

// keyDone prefixes the state keys of completed files kept until their
// batch is committed.
const keyDone = "done/"

// keyGot prefixes the state keys of the files received under a grant, so
// that they can be destroyed when it ends.
const keyGot = "got/"

// Destroy removes every file received under the grant (and still there),
// then the empty folders they leave.
func (s *Sink) Destroy(ctx context.Context, grant string, st connectors.State, ch *connectors.Changes) (string, error) {
	n := 0
	dirs := map[string]bool{}
	err := st.Scan(keyGot, func(key string, _ []byte) error {
		rel := strings.TrimPrefix(key, keyGot)
		dst, err := s.target(rel)
		if err != nil {
			return err
		}
		if err := os.Remove(dst); err == nil {
			n++
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("destroy %s: %w", rel, err)
		}
		for d := filepath.Dir(dst); d != s.root && strings.HasPrefix(d, s.root); d = filepath.Dir(d) {
			dirs[d] = true
		}
		ch.Delete(key)
		return nil
	})
	if err != nil {
		return "", err
	}
	// Parts of files still being assembled were received under it too.
	parts, _ := os.ReadDir(s.tmp)
	for _, p := range parts {
		os.Remove(filepath.Join(s.tmp, p.Name()))
	}
	// Deepest first; a folder that still holds other files stays.
	var ds []string
	for d := range dirs {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return len(ds[i]) > len(ds[j]) })
	for _, d := range ds {
		os.Remove(d)
	}
	if err := fsutil.SyncDir(s.root); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d files received under grant %s, deleted from %s", n, grant, s.root), nil
}

func (s *Sink) put(e *batch.FileEntry, data io.Reader, ch *connectors.Changes) error {
	dst, err := s.target(e.Path)
	if err != nil {
		return err
	}
	if len(e.SHA256) < 16 {
		return fmt.Errorf("missing file hash")
	}
	tmp := s.tempName(e.Path, e.SHA256)
	if e.Chunk == 0 {
		s.dropTemps(e.Path, tmp)
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	hw := sha256.New()
	n, err := io.Copy(io.MultiWriter(hw, &offsetWriter{f: f, off: e.Offset}), data)
	if err != nil {
		return err
	}
	if n != e.Length || hex.EncodeToString(hw.Sum(nil)) != e.ChunkSHA256 {
		return fmt.Errorf("chunk %d: %w", e.Chunk, ErrMismatch)
	}
	if e.Chunk < e.Chunks-1 {
		return f.Sync()
	}
	// Last chunk: the whole file is in the temporary file, or it was
	// renamed already by an apply that crashed before its commit.
	if err := f.Truncate(e.Size); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	sum := e.ChunkSHA256 // a file in one chunk was hashed as it was written
	if e.Chunks != 1 || e.Offset != 0 || e.Length != e.Size {
		if sum, err = hashFile(tmp); err != nil {
			return err
		}
	}
	if sum != e.SHA256 {
		f.Close()
		os.Remove(tmp)
		return s.redo(e, dst, ch)
	}
	if err := f.Chmod(fs.FileMode(e.Mode).Perm() | 0o200); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, e.ModTime, e.ModTime); err != nil {
		return err
	}
	// Keep a second name for the finished file until the batch is
	// committed: if the agent dies after the rename below and the
	// department's application takes the file away meanwhile, applying the
	// batch again can still put it in place.
	if ch != nil {
		done := tmp + ".done"
		os.Remove(done)
		if err := os.Link(tmp, done); err == nil {
			ch.Put(keyDone+filepath.Base(done), []byte(e.Path))
		}
	}
	return s.place(tmp, dst)
}

// redo handles a final chunk whose file is not (or no longer) assembled:
// the batch was applied before, up to its rename, by a process that died
// before its commit.
func (s *Sink) redo(e *batch.FileEntry, dst string, ch *connectors.Changes) error {
	done := s.tempName(e.Path, e.SHA256) + ".done"
	if _, err := os.Stat(done); err == nil && ch != nil {
		// Left by the apply that crashed; remove it with this commit.
		ch.Put(keyDone+filepath.Base(done), []byte(e.Path))
	}
	if sum, _ := hashFile(dst); sum == e.SHA256 {
		return nil
	}
	if sum, _ := hashFile(done); sum == e.SHA256 {
		again := done + ".again"
		os.Remove(again) // from a crash between the link and the rename
		if err := os.Link(done, again); err != nil {
			return err
		}
		return s.place(again, dst)
	}
	return fmt.Errorf("whole file: %w; earlier chunks of this file were lost from %s, so this line stops: have the provider send the file again (touch it)", ErrMismatch, s.tmp)
}

// place renames a finished file into its target and makes it durable.
func (s *Sink) place(from, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(from, dst); err != nil {
		return err
	}
	return s.syncDirs(filepath.Dir(dst), s.tmp)
}

// syncDirs makes folder entries durable: at the end of the batch being
// applied, or now outside one.
func (s *Sink) syncDirs(dirs ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range dirs {
		if s.dirty != nil {
			s.dirty[d] = true
		} else if err := fsutil.SyncDir(d); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) delete(e *batch.FileEntry) error {
	dst, err := s.target(e.Path)
	if err != nil {
		return err
	}
	s.dropTemps(e.Path, "")
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return s.syncDirs(filepath.Dir(dst))
}

type offsetWriter struct {
	f   *os.File
	off int64
}

func (w *offsetWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	return n, err
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// maxMismatches bounds the differences a verify receipt lists.
const maxMismatches = 1000

// compare checks the folder against a provider's manifest (JSON lines of
// ManifestEntry): files missing here, files whose content differs (by
// SHA-256), and files here that the provider never sent.
func (s *Sink) compare(ctx context.Context, manifest io.Reader) ([]string, error) {
	var diff []string
	more := 0
	note := func(what, rel string) {
		if len(diff) < maxMismatches {
			diff = append(diff, what+": "+rel)
		} else {
			more++
		}
	}
	want := map[string]bool{}
	dec := json.NewDecoder(manifest)
	for {
		var m ManifestEntry
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("read the manifest: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		want[m.Path] = true
		dst, err := s.target(m.Path)
		if err != nil {
			return nil, err
		}
		sum, err := hashFile(dst)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			note("missing", m.Path)
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", m.Path, err)
		case sum != m.SHA256:
			note("differs", m.Path)
		}
	}
	err := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == s.tmp {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); !want[rel] {
			note("extra", rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.root, err)
	}
	if more > 0 {
		diff = append(diff, fmt.Sprintf("… and %d more", more))
	}
	return diff, nil
}
