package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
)

// Sink writes received files into a folder.
//
// Every path below the folder is resolved from the folder's open descriptor
// one element at a time without following a symlink (nofollow.go), and the
// temporary folder is used through its own open descriptor: a link planted
// in the target folder by a local user can neither redirect a write or a
// delete outside it nor be followed by a verification.
type Sink struct {
	root     string
	tmp      string
	rootFD   int // the target folder
	tmpFD    int // its TempDir
	fileMode fs.FileMode
	dirMode  fs.FileMode
	log      *slog.Logger

	// dirty holds the folders (relative to root, or dirtyTmp) whose
	// entries changed in the batch being applied; each is synced once,
	// before Apply returns (and so before the agent commits the batch),
	// rather than once per file.
	mu    sync.Mutex
	dirty map[string]bool
}

// dirtyTmp stands for TempDir in Sink.dirty; it cannot be a relative path.
const dirtyTmp = "\x00tmp"

var (
	_ connectors.Sink      = (*Sink)(nil)
	_ connectors.Destroyer = (*Sink)(nil)
)

// Default modes of what a sink writes, whatever modes the provider's files
// had: received data is for the department's own applications, not for
// every local user.
const (
	DefaultFileMode fs.FileMode = 0o640
	DefaultDirMode  fs.FileMode = 0o750
)

// NewSink prepares root and its temporary folder, with the default modes.
func NewSink(root string, log *slog.Logger) (*Sink, error) {
	return newSink(root, DefaultFileMode, DefaultDirMode, log)
}

func newSink(root string, fileMode, dirMode fs.FileMode, log *slog.Logger) (*Sink, error) {
	if _, err := os.Lstat(root); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(root, dirMode); err != nil {
			return nil, fmt.Errorf("prepare target folder: %w", err)
		}
		if err := fsutil.SyncDir(filepath.Dir(root)); err != nil {
			return nil, fmt.Errorf("prepare target folder: %w", err)
		}
	}
	rootFD, err := openRootDir(root)
	if err != nil {
		return nil, fmt.Errorf("prepare target folder: %w", err)
	}
	tmpFD, err := openDirAt(rootFD, TempDir, true, 0o700)
	if err != nil {
		unix.Close(rootFD)
		if errors.Is(err, errLink) {
			return nil, fmt.Errorf("prepare target folder: %s is not a folder (a symlink?); remove it, the agent assembles received files there: %w",
				filepath.Join(root, TempDir), err)
		}
		return nil, fmt.Errorf("prepare target folder: %w", err)
	}
	return &Sink{root: root, tmp: filepath.Join(root, TempDir), rootFD: rootFD, tmpFD: tmpFD,
		fileMode: fileMode, dirMode: dirMode, log: log}, nil
}

// Close releases the folders' descriptors.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rootFD >= 0 {
		unix.Close(s.rootFD)
		unix.Close(s.tmpFD)
		s.rootFD, s.tmpFD = -1, -1
	}
	return nil
}

// ErrMismatch means received content does not match its declared hash.
var ErrMismatch = errors.New("content does not match its hash")

// target checks a path from a batch (or from the sink's state) before any
// use: relative, clean, no "..", not inside TempDir.
func (s *Sink) target(rel string) (string, error) {
	if err := batch.CheckPath(rel); err != nil {
		return "", fmt.Errorf("unsafe path %q: %v", rel, err)
	}
	if strings.Split(rel, "/")[0] == TempDir {
		return "", fmt.Errorf("unsafe path %q: inside %s", rel, TempDir)
	}
	return rel, nil
}

// tempPrefix names every temporary file of one target path; the suffix names
// the version being assembled.
func tempPrefix(rel string) string {
	h := sha256.Sum256([]byte(rel))
	return hex.EncodeToString(h[:8]) + "-"
}

// tempName is the name in TempDir of the version of rel being assembled.
func (s *Sink) tempName(rel, fileSHA string) string {
	return tempPrefix(rel) + fileSHA[:16] + ".part"
}

// tempNames lists TempDir through its descriptor.
func (s *Sink) tempNames() ([]string, error) {
	fd, err := unix.Openat(s.tmpFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: s.tmp, Err: err}
	}
	d := os.NewFile(uintptr(fd), s.tmp)
	defer d.Close()
	return d.Readdirnames(-1)
}

// removeTemp removes a name in TempDir (never what a link there names).
func (s *Sink) removeTemp(name string) error {
	if err := unix.Unlinkat(s.tmpFD, name, 0); err != nil && err != unix.ENOENT {
		return &fs.PathError{Op: "remove", Path: filepath.Join(s.tmp, name), Err: err}
	}
	return nil
}

// openTemp opens a name in TempDir without following a link.
func (s *Sink) openTemp(name string, flag int, perm uint32) (*os.File, error) {
	fd, err := unix.Openat(s.tmpFD, name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(s.tmp, name), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(s.tmp, name)), nil
}

// dropTemps removes unfinished versions of rel other than keep.
func (s *Sink) dropTemps(rel, keep string) {
	names, _ := s.tempNames()
	for _, n := range names {
		if strings.HasPrefix(n, tempPrefix(rel)) && strings.HasSuffix(n, ".part") && n != keep {
			s.removeTemp(n)
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
			if name := strings.TrimPrefix(key, keyDone); !strings.Contains(name, "/") {
				s.removeTemp(name)
			}
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
		if err := s.syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// syncDir fsyncs a folder of the target (relative to root, or dirtyTmp)
// so that renames and removals in it survive a crash. A folder gone
// meanwhile (or a link in its place) has nothing left to make durable.
func (s *Sink) syncDir(rel string) error {
	if rel == dirtyTmp {
		if err := unix.Fsync(s.tmpFD); err != nil {
			return &fs.PathError{Op: "sync", Path: s.tmp, Err: err}
		}
		return nil
	}
	fd, err := openDirAt(s.rootFD, rel, false, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errLink) {
		return nil // nothing of ours changed there
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return &fs.PathError{Op: "sync", Path: filepath.Join(s.root, rel), Err: err}
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
		rel, err := s.target(strings.TrimPrefix(key, keyGot))
		if err != nil {
			return err
		}
		removed, err := s.removeTarget(rel)
		if err != nil {
			return fmt.Errorf("destroy %s: %w", rel, err)
		}
		if removed {
			n++
		}
		for d := parentOf(rel); d != ""; d = parentOf(d) {
			dirs[d] = true
		}
		ch.Delete(key)
		return nil
	})
	if err != nil {
		return "", err
	}
	// Parts of files still being assembled were received under it too.
	parts, _ := s.tempNames()
	for _, p := range parts {
		s.removeTemp(p)
	}
	// Deepest first; a folder that still holds other files stays.
	var ds []string
	for d := range dirs {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return len(ds[i]) > len(ds[j]) })
	for _, d := range ds {
		if parent, err := openDirAt(s.rootFD, parentOf(d), false, 0); err == nil {
			unix.Unlinkat(parent, path.Base(d), unix.AT_REMOVEDIR)
			unix.Close(parent)
		}
	}
	if err := s.syncDir(""); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d files received under grant %s, deleted from %s", n, grant, s.root), nil
}

func (s *Sink) put(e *batch.FileEntry, data io.Reader, ch *connectors.Changes) error {
	rel, err := s.target(e.Path)
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
	f, err := s.openTemp(tmp, unix.O_CREAT|unix.O_RDWR, 0o600)
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
		if sum, err = hashReader(f); err != nil {
			return err
		}
	}
	if sum != e.SHA256 {
		f.Close()
		s.removeTemp(tmp)
		return s.redo(e, rel, ch)
	}
	// The sink's mode, not the provider's: the provider's bits (up to
	// 0777) say nothing about who may read the data here.
	if err := f.Chmod(s.fileMode); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(e.ModTime.UnixNano()), unix.NsecToTimespec(e.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(s.tmpFD, tmp, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chtimes", Path: filepath.Join(s.tmp, tmp), Err: err}
	}
	// Keep a second name for the finished file until the batch is
	// committed: if the agent dies after the rename below and the
	// department's application takes the file away meanwhile, applying the
	// batch again can still put it in place.
	if ch != nil {
		done := tmp + ".done"
		s.removeTemp(done)
		if err := unix.Linkat(s.tmpFD, tmp, s.tmpFD, done, 0); err == nil {
			ch.Put(keyDone+done, []byte(e.Path))
		}
	}
	return s.place(tmp, rel)
}

// redo handles a final chunk whose file is not (or no longer) assembled:
// the batch was applied before, up to its rename, by a process that died
// before its commit.
func (s *Sink) redo(e *batch.FileEntry, rel string, ch *connectors.Changes) error {
	done := s.tempName(e.Path, e.SHA256) + ".done"
	var st unix.Stat_t
	if err := unix.Fstatat(s.tmpFD, done, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && ch != nil {
		// Left by the apply that crashed; remove it with this commit.
		ch.Put(keyDone+done, []byte(e.Path))
	}
	if sum, _ := s.hashTarget(rel); sum == e.SHA256 {
		return nil
	}
	if sum, _ := s.hashTemp(done); sum == e.SHA256 {
		again := done + ".again"
		s.removeTemp(again) // from a crash between the link and the rename
		if err := unix.Linkat(s.tmpFD, done, s.tmpFD, again, 0); err != nil {
			return &fs.PathError{Op: "link", Path: filepath.Join(s.tmp, again), Err: err}
		}
		return s.place(again, rel)
	}
	return fmt.Errorf("whole file: %w; earlier chunks of this file were lost from %s, so this line stops: have the provider send the file again (touch it)", ErrMismatch, s.tmp)
}

// place renames a finished file from TempDir into its target and makes it
// durable. Missing folders are made with the sink's folder mode; a symlink
// on the way is refused, never followed, and one at the target itself is
// replaced, not written through.
func (s *Sink) place(from, rel string) error {
	dir, err := openDirAt(s.rootFD, parentOf(rel), true, s.dirMode)
	if errors.Is(err, errLink) {
		return fmt.Errorf("place %s: %w; remove it from %s so that the file can arrive", rel, err, s.root)
	}
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if err := unix.Renameat(s.tmpFD, from, dir, path.Base(rel)); err != nil {
		return &fs.PathError{Op: "rename", Path: filepath.Join(s.root, rel), Err: err}
	}
	return s.syncDirs(parentOf(rel), dirtyTmp)
}

// syncDirs makes folder entries durable: at the end of the batch being
// applied, or now outside one.
func (s *Sink) syncDirs(dirs ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range dirs {
		if s.dirty != nil {
			s.dirty[d] = true
		} else if err := s.syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) delete(e *batch.FileEntry) error {
	rel, err := s.target(e.Path)
	if err != nil {
		return err
	}
	s.dropTemps(e.Path, "")
	if _, err := s.removeTarget(rel); err != nil {
		return err
	}
	return s.syncDirs(parentOf(rel))
}

// removeTarget removes rel below the target folder without following a
// symlink on the way (a link at rel itself is removed, not its target).
// Nothing there, or a link standing where a folder of rel should be, means
// there is nothing of ours to remove.
func (s *Sink) removeTarget(rel string) (removed bool, err error) {
	dir, err := openDirAt(s.rootFD, parentOf(rel), false, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case errors.Is(err, errLink):
		s.log.Warn("a symlink or a file stands on the path of a file to remove; left alone, not followed", "path", rel, "err", err)
		return false, nil
	case err != nil:
		return false, err
	}
	defer unix.Close(dir)
	err = unix.Unlinkat(dir, path.Base(rel), 0)
	if err == unix.EISDIR || err == unix.EPERM {
		// A folder, as os.Remove would take it when empty.
		if rerr := unix.Unlinkat(dir, path.Base(rel), unix.AT_REMOVEDIR); rerr == nil {
			err = nil
		}
	}
	switch err {
	case nil:
		return true, nil
	case unix.ENOENT:
		return false, nil
	}
	return false, &fs.PathError{Op: "remove", Path: filepath.Join(s.root, rel), Err: err}
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

// hashTarget hashes the regular file rel below the target folder, reached
// without following a symlink.
func (s *Sink) hashTarget(rel string) (string, error) {
	var st unix.Stat_t
	f, err := openFileAt(s.rootFD, rel, &st)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return hashReader(f)
}

// hashTemp hashes a file in TempDir.
func (s *Sink) hashTemp(name string) (string, error) {
	f, err := s.openTemp(name, unix.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return hashReader(f)
}

// hashReader hashes f from its start.
func hashReader(f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
