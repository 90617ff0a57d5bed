package file

import (
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
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Source publishes a folder.
type Source struct {
	cfg     *SourceConfig
	log     *slog.Logger
	watcher *fsnotify.Watcher
	changed chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	now     func() time.Time

	mu      sync.Mutex
	settleT *time.Timer

	// skipped holds the entries the last listing left out because they
	// are not regular files (symlinks, pipes, devices, sockets): each is
	// logged once when it appears, not at every scan, and counted for
	// qz-agent status.
	skipped map[string]bool

	// afterList, set by tests, runs between listing and reading.
	afterList func()
}

// sent is the per-grant record of the version of a file last spooled.
type sent struct {
	Size   int64  `json:"size"`
	MTime  int64  `json:"mtime"` // unix nanoseconds
	SHA256 string `json:"sha256"`
}

// plan is a large file being sent chunk by chunk.
type plan struct {
	Path      string    `json:"path"`
	Size      int64     `json:"size"`
	MTime     int64     `json:"mtime"`
	Mode      uint32    `json:"mode"`
	SHA256    string    `json:"sha256"`
	Dev       uint64    `json:"dev,omitempty"` // device and inode of the file planned, to find a swap
	Ino       uint64    `json:"ino,omitempty"`
	ChunkSize int64     `json:"chunk_size"`
	Hashes    []string  `json:"hashes"`
	Next      int       `json:"next"`
	Started   time.Time `json:"started"`
}

const (
	keyPlan = "plan"
	keySent = "f/"
	keyCopy = "copy" // present while a full copy has files left to send
)

// NewSource watches cfg.Path.
func NewSource(cfg *SourceConfig, log *slog.Logger) (*Source, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", cfg.Path, err)
	}
	s := &Source{cfg: cfg, log: log, watcher: w, changed: make(chan struct{}, 1), done: make(chan struct{}), now: time.Now}
	s.addWatches(cfg.Path)
	s.wg.Add(1)
	go s.watch()
	return s, nil
}

var (
	_ connectors.Source  = (*Source)(nil)
	_ connectors.Skipper = (*Source)(nil)
)

func (s *Source) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Changed fires after filesystem events, rescans and settle timeouts.
func (s *Source) Changed() <-chan struct{} { return s.changed }

func (s *Source) addWatches(root string) {
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if d.Name() == TempDir {
			return filepath.SkipDir
		}
		if err := s.watcher.Add(p); err != nil {
			// Too many watches or an odd filesystem: the rescan covers it.
			s.log.Warn("cannot watch folder; relying on rescans", "folder", p, "err", err)
		}
		return nil
	})
}

func (s *Source) watch() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.Rescan)
	defer t.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-s.done:
			return
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					s.addWatches(ev.Name)
				}
			}
			// A file being written fires an event per write: look once the
			// burst pauses, not once per event.
			if debounce == nil {
				debounce = time.After(100 * time.Millisecond)
			}
		case <-debounce:
			debounce = nil
			s.signal()
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			// Overflow and friends: events were lost; a rescan catches up.
			s.log.Warn("folder watch lost events; rescanning", "err", err)
			s.signal()
		case <-t.C:
			s.signal()
		}
	}
}

// wakeAfter asks for another look once an unsettled file may have settled.
func (s *Source) wakeAfter(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settleT != nil {
		s.settleT.Stop()
	}
	s.settleT = time.AfterFunc(d, s.signal)
}

// Close stops watching.
func (s *Source) Close() error {
	close(s.done)
	err := s.watcher.Close()
	s.wg.Wait()
	s.mu.Lock()
	if s.settleT != nil {
		s.settleT.Stop()
	}
	s.mu.Unlock()
	return err
}

type listed struct {
	rel      string
	size     int64
	mtime    time.Time
	mode     fs.FileMode
	dev, ino uint64 // what reading it must find again
}

// list walks the folder. complete is false when part of it could not be
// read: then nothing may be taken for deleted.
func (s *Source) list() (out []listed, complete bool, err error) {
	root := s.cfg.Path
	complete = true
	skipped := map[string]bool{}
	defer func() {
		if err == nil {
			s.noteSkipped(skipped, complete)
		}
	}()
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			s.log.Warn("cannot read; skipping it this time", "path", p, "err", err)
			complete = false
			return nil
		}
		if d.IsDir() {
			if d.Name() == TempDir {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if !s.cfg.matches(rel) {
			return nil
		}
		if !d.Type().IsRegular() {
			// Never followed, never sent: a link could point at anything
			// the agent can read, its own keys included.
			skipped[rel] = true
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			complete = false // removed meanwhile, or unreadable: look again later
			return nil
		}
		l := listed{rel: rel, size: fi.Size(), mtime: fi.ModTime(), mode: fi.Mode().Perm()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			l.dev, l.ino = uint64(st.Dev), st.Ino
		}
		out = append(out, l)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out, complete, err
}

// noteSkipped logs each newly skipped entry once and keeps the set for
// Skipped. An incomplete listing only adds: what it missed may still be
// there.
func (s *Source) noteSkipped(now map[string]bool, complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for rel := range now {
		if !s.skipped[rel] {
			s.log.Warn("not a regular file (a symlink, pipe, device or socket); skipped, never followed or sent", "path", rel)
		}
	}
	if !complete {
		for rel := range s.skipped {
			now[rel] = true
		}
	}
	s.skipped = now
}

// Skipped implements connectors.Skipper: the entries of the folder that the
// last listing left out because they are not regular files.
func (s *Source) Skipped() (n int, some []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for rel := range s.skipped {
		some = append(some, rel)
	}
	sort.Strings(some)
	return len(some), some[:min(len(some), 10)]
}

// maxEntries bounds the file entries of one batch, so its header stays
// small whatever the folder holds (many empty files, a deleted tree).
var maxEntries = 5000

// maxPathBytes bounds the paths of one batch's entries together: long paths
// make long headers, and consumers refuse headers over 4 MiB
// (batch.Limits.MaxHeaderLen). With maxEntries entries of ~300 bytes
// besides their paths, a header stays under 3 MiB.
var maxPathBytes = 1 << 20

// headerFull reports whether out has as many entries as one batch takes.
func headerFull(out *connectors.Output) bool {
	if len(out.Files) >= maxEntries {
		return true
	}
	n := 0
	for i := range out.Files {
		n += len(out.Files[i].Path)
	}
	return n >= maxPathBytes
}

func getJSON(st connectors.State, key string, v any) (bool, error) {
	b, ok, err := st.Get(key)
	if err != nil || !ok {
		return false, err
	}
	return true, json.Unmarshal(b, v)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// errChanged means a file changed while it was being read.
var errChanged = errors.New("file changed while reading")

// errSwapped means a path listed as a regular file named something else
// when it was opened: a symlink, a pipe, or another file (another device
// and inode).
var errSwapped = fmt.Errorf("%w: replaced since it was listed", errChanged)

// openListed opens a listed file without following any symlink, and checks
// that it is still the regular file the listing saw (dev and ino 0: not
// known, as in a plan recorded by an older version).
func (s *Source) openListed(rel string, dev, ino uint64) (*os.File, error) {
	root, err := openRootDir(s.cfg.Path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	var st unix.Stat_t
	fh, err := openFileAt(root, rel, &st)
	switch {
	case errors.Is(err, errNotRegular) || errors.Is(err, errLink):
		return nil, fmt.Errorf("%s: %w (%v)", rel, errSwapped, err)
	case err != nil:
		return nil, err
	case ino != 0 && (uint64(st.Dev) != dev || st.Ino != ino):
		fh.Close()
		return nil, fmt.Errorf("%s: %w (device and inode differ)", rel, errSwapped)
	}
	return fh, nil
}

// Next implements connectors.Source.
func (s *Source) Next(ctx context.Context, st connectors.State, out *connectors.Output) error {
	if out.Project != nil && len(out.Project.Masks) > 0 {
		return errors.New("the grant has masking rules, which a folder's files cannot honour: grant the folder whole")
	}
	out.Kind = "files"
	var p plan
	if ok, err := getJSON(st, keyPlan, &p); err != nil {
		return fmt.Errorf("read plan: %w", err)
	} else if ok {
		return s.nextChunk(&p, out)
	}
	if _, ok, err := st.Get(connectors.KeyVerifyRequest); err != nil {
		return err
	} else if ok {
		return s.verify(st, out)
	}
	return s.scan(ctx, st, out)
}

// ManifestEntry is one line of a verify batch's manifest: a file as this
// provider last sent it.
type ManifestEntry struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// verify fills out with a verify batch: one entry (op "verify", size the
// number of files) whose data is the manifest of every file sent under the
// grant, as JSON lines. The consumer compares its folder with it after
// every earlier batch is applied, and names what differs in its receipt.
func (s *Source) verify(st connectors.State, out *connectors.Output) error {
	var body []byte
	var n int64
	err := st.Scan(keySent, func(key string, raw []byte) error {
		var f sent
		if err := json.Unmarshal(raw, &f); err != nil {
			return err
		}
		line, _ := json.Marshal(ManifestEntry{Path: strings.TrimPrefix(key, keySent), Size: f.Size, SHA256: f.SHA256})
		body = append(append(body, line...), '\n')
		n++
		return nil
	})
	if err != nil {
		return fmt.Errorf("read what was sent: %w", err)
	}
	sum := sha256.Sum256(body)
	h := hex.EncodeToString(sum[:])
	out.Files = append(out.Files, batch.FileEntry{Op: batch.OpVerify, Path: "", Size: n, Length: int64(len(body)), SHA256: h, ChunkSHA256: h, Chunks: 1})
	out.Body = body
	out.Changes.Delete(connectors.KeyVerifyRequest)
	s.log.Info("verify: manifest of the folder sent; waiting for the consumer's comparison", "files", n)
	return nil
}

// nextChunk sends the next chunk of the large file in progress.
func (s *Source) nextChunk(p *plan, out *connectors.Output) error {
	drop := func(why string) error {
		s.log.Info("large file changed during transfer; starting over", "path", p.Path, "why", why)
		out.Changes.Delete(keyPlan)
		return nil
	}
	f, err := s.openListed(p.Path, p.Dev, p.Ino)
	if err != nil {
		return drop(err.Error())
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() != p.Size || fi.ModTime().UnixNano() != p.MTime {
		return drop("size or modification time changed")
	}
	off := int64(p.Next) * p.ChunkSize
	n := min(p.ChunkSize, p.Size-off)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		return drop(err.Error())
	}
	sum := sha256.Sum256(buf)
	if hex.EncodeToString(sum[:]) != p.Hashes[p.Next] {
		return drop("chunk content changed")
	}
	out.Files = append(out.Files, batch.FileEntry{
		Op: "put", Path: p.Path, Size: p.Size, Mode: p.Mode, ModTime: time.Unix(0, p.MTime).UTC(),
		SHA256: p.SHA256, ChunkSize: p.ChunkSize, Chunks: len(p.Hashes), Chunk: p.Next,
		Offset: off, Length: n, ChunkSHA256: p.Hashes[p.Next],
	})
	out.Body = append(out.Body, buf...)
	p.Next++
	if p.Next == len(p.Hashes) {
		out.Changes.Delete(keyPlan)
		out.Changes.Put(keySent+p.Path, mustJSON(sent{Size: p.Size, MTime: p.MTime, SHA256: p.SHA256}))
	} else {
		out.Changes.Put(keyPlan, mustJSON(p))
	}
	return nil
}

// scan looks for new, changed and deleted files and fills out with as many
// small files as fit, or starts a large one.
func (s *Source) scan(ctx context.Context, st connectors.State, out *connectors.Output) error {
	files, complete, err := s.list()
	if err != nil {
		return fmt.Errorf("scan %s: %w", s.cfg.Path, err)
	}
	if s.afterList != nil {
		s.afterList()
	}
	full := !complete // an incomplete listing must not read as deletions
	now := s.now()
	present := make(map[string]bool, len(files))
	var unsettled time.Duration
	stopped := false // this batch is full; later files wait for the next
	for _, f := range files {
		present[f.rel] = true
		if stopped {
			continue
		}
		if headerFull(out) {
			stopped = true
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var prev sent
		had, err := getJSON(st, keySent+f.rel, &prev)
		if err != nil {
			return err
		}
		if had && prev.Size == f.size && prev.MTime == f.mtime.UnixNano() {
			continue
		}
		if age := now.Sub(f.mtime); age < s.cfg.Settle {
			// Possibly still being written: look again once it has settled.
			if w := s.cfg.Settle - age; unsettled == 0 || w < unsettled {
				unsettled = w
			}
			continue
		}
		chunk := int64(s.cfg.ChunkSize)
		if f.size > chunk {
			if !out.Empty() {
				stopped = true // send what we have; the large file starts next time
				continue
			}
			p, err := s.planFile(f, chunk)
			s.noteSwap(f.rel, err)
			if errors.Is(err, errChanged) || errors.Is(err, fs.ErrNotExist) {
				unsettled = s.cfg.Settle
				continue
			}
			if err != nil {
				s.unreadable(f.rel, err)
				unsettled = s.cfg.Rescan
				continue
			}
			if had && prev.SHA256 == p.SHA256 {
				out.Changes.Put(keySent+f.rel, mustJSON(sent{Size: f.size, MTime: f.mtime.UnixNano(), SHA256: p.SHA256}))
				continue
			}
			if err := s.nextChunk(p, out); err != nil {
				return err
			}
			stopped = true
			continue
		}
		if int64(len(out.Body))+f.size > out.Limit && !out.Empty() {
			stopped = true
			continue
		}
		data, sum, err := s.readSmall(f)
		s.noteSwap(f.rel, err)
		if errors.Is(err, errChanged) || errors.Is(err, fs.ErrNotExist) {
			unsettled = s.cfg.Settle
			continue
		}
		if err != nil {
			s.unreadable(f.rel, err)
			unsettled = s.cfg.Rescan
			continue
		}
		rec := mustJSON(sent{Size: f.size, MTime: f.mtime.UnixNano(), SHA256: sum})
		out.Changes.Put(keySent+f.rel, rec)
		if had && prev.SHA256 == sum {
			continue // touched, not changed
		}
		cs := chunk
		out.Files = append(out.Files, batch.FileEntry{
			Op: "put", Path: f.rel, Size: f.size, Mode: uint32(f.mode), ModTime: f.mtime.UTC(),
			SHA256: sum, ChunkSize: cs, Chunks: 1, Chunk: 0, Offset: 0, Length: f.size, ChunkSHA256: sum,
		})
		out.Body = append(out.Body, data...)
	}
	if unsettled > 0 {
		s.wakeAfter(unsettled + 50*time.Millisecond)
	}
	if !full && !stopped {
		// Every present file is handled: record what disappeared.
		err := st.Scan(keySent, func(key string, _ []byte) error {
			rel := strings.TrimPrefix(key, keySent)
			if present[rel] || headerFull(out) {
				return nil
			}
			out.Changes.Delete(key)
			if s.cfg.PropagateDeletes {
				out.Files = append(out.Files, batch.FileEntry{Op: "delete", Path: rel})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if !full && !stopped && unsettled == 0 {
		if _, copying, err := st.Get(keyCopy); err != nil {
			return err
		} else if copying {
			out.Changes.Delete(keyCopy)
		}
	}
	if out.Empty() && out.Changes.Len() == 0 {
		return connectors.ErrIdle
	}
	return nil
}

// StartCopy makes the grant's next batches send every file again (a full
// copy, 批量复制), whatever was sent before.
func (s *Source) StartCopy(ctx context.Context, st connectors.State, ch *connectors.Changes) (connectors.Size, error) {
	files, _, err := s.list()
	if err != nil {
		return connectors.Size{}, fmt.Errorf("scan %s: %w", s.cfg.Path, err)
	}
	var size connectors.Size
	for _, f := range files {
		size.Files++
		size.Bytes += f.size
	}
	ch.Delete(keyPlan)
	err = st.Scan(keySent, func(key string, _ []byte) error {
		ch.Delete(key)
		return nil
	})
	ch.Put(keyCopy, []byte("1"))
	return size, err
}

// Copying reports whether a full copy has files left to send.
func (s *Source) Copying(st connectors.State) (bool, error) {
	_, ok, err := st.Get(keyCopy)
	return ok, err
}

// unreadable logs a file that cannot be read (permissions, say) once per
// scan; the rest of the folder goes on.
func (s *Source) unreadable(rel string, err error) {
	s.log.Warn("cannot read file; skipping it until it can be read", "path", rel, "err", err)
}

// noteSwap logs a file replaced between listing and reading: nothing of it
// is sent, and the next listing shows what is there now.
func (s *Source) noteSwap(rel string, err error) {
	if errors.Is(err, errSwapped) {
		s.log.Warn("file replaced between listing and reading (by a symlink or another file); not sent", "path", rel, "err", err)
	}
}

func (s *Source) readSmall(f listed) ([]byte, string, error) {
	fh, err := s.openListed(f.rel, f.dev, f.ino)
	if err != nil {
		return nil, "", err
	}
	defer fh.Close()
	data := make([]byte, f.size)
	if _, err := io.ReadFull(fh, data); err != nil {
		return nil, "", errChanged
	}
	if err := unchanged(fh, f); err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:]), nil
}

func unchanged(fh *os.File, f listed) error {
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != f.size || !fi.ModTime().Equal(f.mtime) {
		return errChanged
	}
	return nil
}

// planFile hashes a large file whole and chunk by chunk in one pass.
func (s *Source) planFile(f listed, chunk int64) (*plan, error) {
	fh, err := s.openListed(f.rel, f.dev, f.ino)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	whole := sha256.New()
	p := &plan{Path: f.rel, Size: f.size, MTime: f.mtime.UnixNano(), Mode: uint32(f.mode), Dev: f.dev, Ino: f.ino, ChunkSize: chunk, Started: s.now()}
	buf := make([]byte, 256<<10)
	for off := int64(0); off < f.size; off += chunk {
		part := sha256.New()
		n, err := io.CopyBuffer(io.MultiWriter(whole, part), io.LimitReader(fh, chunk), buf)
		if err != nil {
			return nil, err
		}
		if n != min(chunk, f.size-off) {
			return nil, errChanged
		}
		p.Hashes = append(p.Hashes, hex.EncodeToString(part.Sum(nil)))
	}
	if err := unchanged(fh, f); err != nil {
		return nil, err
	}
	p.SHA256 = hex.EncodeToString(whole.Sum(nil))
	return p, nil
}
