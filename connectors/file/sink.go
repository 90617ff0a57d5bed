package file

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
)

// Sink writes received files into a folder.
type Sink struct {
	root string
	tmp  string
	log  *slog.Logger
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
func (s *Sink) Apply(ctx context.Context, h *batch.Header, body io.Reader, _ connectors.State, _ *connectors.Changes) error {
	if h.Kind != "files" {
		return fmt.Errorf("file sink cannot apply a %q batch", h.Kind)
	}
	for i := range h.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := &h.Files[i]
		var err error
		switch e.Op {
		case "put":
			err = s.put(e, io.LimitReader(body, e.Length))
		case "delete":
			err = s.delete(e)
		default:
			err = fmt.Errorf("unknown file operation %q", e.Op)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", e.Op, e.Path, err)
		}
	}
	return nil
}

func (s *Sink) put(e *batch.FileEntry, data io.Reader) error {
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
	if sum, err := hashFile(tmp); err != nil {
		return err
	} else if sum != e.SHA256 {
		if done, _ := hashFile(dst); done == e.SHA256 {
			os.Remove(tmp)
			return nil
		}
		os.Remove(tmp)
		return fmt.Errorf("whole file: %w (a chunk is missing; the provider will resend the file)", ErrMismatch)
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
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	if err := fsutil.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	return fsutil.SyncDir(s.tmp)
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
	return fsutil.SyncDir(filepath.Dir(dst))
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
