package file

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
)

// logBuf collects a logger's lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// secretDir makes a folder outside the published one holding a key-like
// file, as the agent's identity folder does.
func secretDir(t *testing.T) (path string, content []byte) {
	t.Helper()
	dir := t.TempDir()
	content = []byte("-----BEGIN PRIVATE KEY-----\nnot to leave this server\n")
	p := filepath.Join(dir, "node.key")
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, content
}

// nextBodies runs the source until it is idle and returns every body it
// produced, committing its state.
func nextBodies(t *testing.T, src *Source, st *connectorstest.MemState) [][]byte {
	t.Helper()
	var bodies [][]byte
	for range 100 {
		out := connectors.Output{Limit: 1 << 20}
		err := src.Next(context.Background(), st, &out)
		if errors.Is(err, connectors.ErrIdle) {
			return bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		st.Commit(&out.Changes)
		bodies = append(bodies, out.Body)
	}
	t.Fatal("source never went idle")
	return nil
}

// TestSourceRefusesSwap: a file listed as regular and replaced before it is
// read — by a symlink to the agent's key, by a symlink in place of its
// folder, or by another file — is not sent. What the next listing finds is:
// nothing for the links (never followed), the new file for a replacement.
func TestSourceRefusesSwap(t *testing.T) {
	key, secret := secretDir(t)
	replacement := bytes.Repeat([]byte("r"), len(secret))
	for _, tc := range []struct {
		name  string
		swap  func(t *testing.T, dir, rel string)
		later []byte // sent by the next scan
	}{
		{"symlink to a key", func(t *testing.T, dir, rel string) {
			p := filepath.Join(dir, rel)
			os.Remove(p)
			if err := os.Symlink(key, p); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"folder swapped for a symlink", func(t *testing.T, dir, rel string) {
			// sub/node.key listed as a harmless file; then sub becomes a
			// link to the key's folder, so the same path names the key.
			sub := filepath.Join(dir, "sub")
			os.RemoveAll(sub)
			if err := os.Symlink(filepath.Dir(key), sub); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"another file under the same name", func(t *testing.T, dir, rel string) {
			p := filepath.Join(dir, rel)
			fi, _ := os.Stat(p)
			tmp := p + ".new"
			os.WriteFile(tmp, replacement, 0o644)
			os.Chtimes(tmp, fi.ModTime(), fi.ModTime())
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}, replacement},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuf
			cfg := NewSourceConfig()
			cfg.Path = t.TempDir()
			cfg.Settle = 0
			src, err := NewSource(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			rel := "sub/node.key"
			// The decoy has the key's size and modification time, as an
			// attacker who can stat the key would make it: only the open
			// itself can tell them apart.
			harmless := bytes.Repeat([]byte("x"), len(secret))
			write(t, cfg.Path, rel, harmless, time.Hour)
			kfi, err := os.Stat(key)
			if err != nil {
				t.Fatal(err)
			}
			os.Chtimes(filepath.Join(cfg.Path, rel), kfi.ModTime(), kfi.ModTime())
			swapped := false
			src.afterList = func() {
				if !swapped {
					swapped = true
					tc.swap(t, cfg.Path, rel)
				}
			}
			st := connectorstest.NewMemState("src")
			for _, b := range nextBodies(t, src, st) {
				if bytes.Contains(b, secret[:20]) {
					t.Fatal("the key left in a batch")
				}
				if len(b) > 0 {
					t.Fatalf("a batch carried %d bytes of a swapped file", len(b))
				}
			}
			if logs.count("file replaced between listing and reading") != 1 {
				t.Errorf("the swap was not logged once:\n%s", logs.b.String())
			}
			var later []byte
			for _, b := range nextBodies(t, src, st) {
				later = append(later, b...)
			}
			if !bytes.Equal(later, tc.later) {
				t.Errorf("the next scan sent %q, want %q", later, tc.later)
			}
		})
	}
}

// TestSourceSkipsNonRegular: symlinks (to a file, to a folder) and pipes
// are never sent, each is logged once however many scans see it, and
// Skipped counts them.
func TestSourceSkipsNonRegular(t *testing.T) {
	key, secret := secretDir(t)
	var logs logBuf
	cfg := NewSourceConfig()
	cfg.Path = t.TempDir()
	cfg.Settle = 0
	src, err := NewSource(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	write(t, cfg.Path, "ok.txt", []byte("fine"), time.Hour)
	os.Symlink(key, filepath.Join(cfg.Path, "key-link"))
	os.Symlink(filepath.Dir(key), filepath.Join(cfg.Path, "dir-link"))
	if err := syscall.Mkfifo(filepath.Join(cfg.Path, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := connectorstest.NewMemState("src")
	var sent []byte
	for range 3 {
		for _, b := range nextBodies(t, src, st) {
			sent = append(sent, b...)
		}
		st.Commit(&connectors.Changes{})
		// A touched file makes the next scan look at everything again.
		write(t, cfg.Path, "ok.txt", []byte("fine"), time.Hour)
	}
	if bytes.Contains(sent, secret[:20]) {
		t.Fatal("a symlink's target was sent")
	}
	if string(sent) != "fine" {
		t.Errorf("sent %q, want only ok.txt's content", sent)
	}
	if n := logs.count("not a regular file"); n != 3 {
		t.Errorf("%d log lines for 3 skipped entries over 3 scans, want 3:\n%s", n, logs.b.String())
	}
	n, some := src.Skipped()
	if n != 3 || strings.Join(some, ",") != "dir-link,key-link,pipe" {
		t.Errorf("Skipped() = %d %v, want 3 [dir-link key-link pipe]", n, some)
	}
	os.Remove(filepath.Join(cfg.Path, "pipe"))
	nextBodies(t, src, st)
	src.list()
	if n, _ := src.Skipped(); n != 2 {
		t.Errorf("Skipped() = %d after the pipe went, want 2", n)
	}
}

// TestHeaderBoundedByPaths: long paths end a batch before maxEntries, so
// the header stays under the consumers' header limit.
func TestHeaderBoundedByPaths(t *testing.T) {
	defer func(old int) { maxPathBytes = old }(maxPathBytes)
	maxPathBytes = 400
	p := newPair(t, nil)
	name := strings.Repeat("长", 30) // 90 bytes
	for i := range 20 {
		write(t, p.srcD, name+strconv.Itoa(i), nil, time.Hour)
	}
	batches := 0
	for _, out := range p.extract(t) {
		n := 0
		for _, e := range out.Files {
			n += len(e.Path)
		}
		if n > maxPathBytes+100 {
			t.Errorf("a batch carried %d bytes of paths; the bound is %d", n, maxPathBytes)
		}
		if len(out.Files) > 0 {
			batches++
		}
	}
	if batches < 4 {
		t.Errorf("20 paths of 90 bytes went in %d batches, want at least 4", batches)
	}
}
