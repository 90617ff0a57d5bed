package file

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func write(t *testing.T, root, rel string, data []byte, age time.Duration) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-age)
	os.Chtimes(p, old, old)
}

type pair struct {
	src    *Source
	sink   *Sink
	st     *connectorstest.MemState
	sinkSt *connectorstest.MemState
	sinkD  string
	srcD   string
	n      int // batches moved
}

func newPair(t *testing.T, mod func(*SourceConfig)) *pair {
	t.Helper()
	cfg := NewSourceConfig()
	cfg.Path = t.TempDir()
	cfg.ChunkSize = 64 << 10
	cfg.Settle = 200 * time.Millisecond
	if mod != nil {
		mod(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	src, err := NewSource(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	dst := t.TempDir()
	sink, err := NewSink(dst, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return &pair{src: src, sink: sink, st: connectorstest.NewMemState("src"), sinkSt: connectorstest.NewMemState("sink"), sinkD: dst, srcD: cfg.Path}
}

// extract takes batches from the source until it is idle, committing the
// source's state, without applying them.
func (p *pair) extract(t *testing.T) []connectors.Output {
	t.Helper()
	var outs []connectors.Output
	for {
		out := connectors.Output{Limit: 100 << 10}
		err := p.src.Next(context.Background(), p.st, &out)
		if errors.Is(err, connectors.ErrIdle) {
			return outs
		}
		if err != nil {
			t.Fatal(err)
		}
		p.st.Commit(&out.Changes)
		outs = append(outs, out)
	}
}

// sync moves batches until the source is idle.
func (p *pair) sync(t *testing.T) {
	t.Helper()
	for range 10000 {
		out := connectors.Output{Limit: 100 << 10}
		err := p.src.Next(context.Background(), p.st, &out)
		if errors.Is(err, connectors.ErrIdle) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !out.Empty() {
			h := batch.Header{Kind: out.Kind, Files: out.Files, BodyLen: int64(len(out.Body))}
			var ch connectors.Changes
			if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), p.sinkSt, &ch); err != nil {
				t.Fatal(err)
			}
			p.sinkSt.Commit(&ch)
			p.n++
		}
		p.st.Commit(&out.Changes)
	}
	t.Fatal("source never went idle")
}

func (p *pair) same(t *testing.T, rel string) {
	t.Helper()
	a, err1 := os.ReadFile(filepath.Join(p.srcD, filepath.FromSlash(rel)))
	b, err2 := os.ReadFile(filepath.Join(p.sinkD, filepath.FromSlash(rel)))
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Errorf("%s differs at the sink (%v, %v; %d vs %d bytes)", rel, err1, err2, len(a), len(b))
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed ^ byte(i>>9)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	p := newPair(t, nil)
	files := map[string][]byte{
		"a.txt":                  []byte("hello"),
		"empty":                  {},
		"报表/二〇二六年.xlsx":          pattern(1000, 1),
		"deep/er/large.bin":      pattern(64<<10*5+17, 2), // six chunks
		"exact/chunk.bin":        pattern(64<<10, 3),
		"many/one.csv":           pattern(90<<10, 4),
		"many/two.csv":           pattern(30<<10, 5),
		"skip/" + TempDir + "/x": []byte("never"),
	}
	for rel, data := range files {
		write(t, p.srcD, rel, data, time.Hour)
	}
	p.sync(t)
	for rel := range files {
		if strings.Contains(rel, TempDir) {
			continue
		}
		p.same(t, rel)
	}
	if p.n < 7 {
		t.Errorf("only %d batches; the large file should take one a chunk", p.n)
	}
	before := p.n
	p.sync(t)
	if p.n != before {
		t.Errorf("unchanged folder produced %d more batches", p.n-before)
	}
	// A touched but unchanged file is not sent again.
	later := time.Now().Add(-time.Minute)
	os.Chtimes(filepath.Join(p.srcD, "a.txt"), later, later)
	p.sync(t)
	if p.n != before {
		t.Errorf("touched file was sent again")
	}
	// A changed file is.
	write(t, p.srcD, "deep/er/large.bin", pattern(64<<10*3, 9), 30*time.Minute)
	p.sync(t)
	p.same(t, "deep/er/large.bin")
	// The last batch's finished-file names go with the next apply.
	var ch connectors.Changes
	p.sink.Apply(context.Background(), &batch.Header{Kind: "files"}, bytes.NewReader(nil), p.sinkSt, &ch)
	p.sinkSt.Commit(&ch)
	if ents, _ := os.ReadDir(filepath.Join(p.sinkD, TempDir)); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}

// TestCrashAfterRename: the agent dies after the final rename of a file
// but before its commit, and the department's application has taken the
// file away meanwhile. Applying the batch again puts it back.
func TestCrashAfterRename(t *testing.T) {
	p := newPair(t, nil)
	write(t, p.srcD, "pickup/big.bin", pattern(64<<10*3+5, 11), time.Hour)
	outs := p.extract(t)
	for i, out := range outs {
		h := batch.Header{Kind: out.Kind, Files: out.Files}
		var ch connectors.Changes
		if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), p.sinkSt, &ch); err != nil {
			t.Fatal(err)
		}
		if i < len(outs)-1 {
			p.sinkSt.Commit(&ch) // the last commit is lost in the crash
		}
	}
	dst := filepath.Join(p.sinkD, "pickup", "big.bin")
	if err := os.Rename(dst, filepath.Join(t.TempDir(), "taken")); err != nil {
		t.Fatal(err)
	}
	last := outs[len(outs)-1]
	h := batch.Header{Kind: last.Kind, Files: last.Files}
	var ch connectors.Changes
	if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(last.Body), p.sinkSt, &ch); err != nil {
		t.Fatalf("re-apply after the crash: %v", err)
	}
	p.sinkSt.Commit(&ch)
	p.same(t, "pickup/big.bin")
}

func TestGlobsAndSettle(t *testing.T) {
	p := newPair(t, func(c *SourceConfig) {
		c.Include = []string{"**/*.csv", "*.txt"}
		c.Exclude = []string{"tmp/**"}
	})
	write(t, p.srcD, "a.txt", []byte("a"), time.Hour)
	write(t, p.srcD, "x/b.csv", []byte("b"), time.Hour)
	write(t, p.srcD, "x/c.bin", []byte("c"), time.Hour)
	write(t, p.srcD, "tmp/d.csv", []byte("d"), time.Hour)
	write(t, p.srcD, "fresh.txt", []byte("being written"), 0)
	p.sync(t)
	for rel, want := range map[string]bool{"a.txt": true, "x/b.csv": true, "x/c.bin": false, "tmp/d.csv": false, "fresh.txt": false} {
		_, err := os.Stat(filepath.Join(p.sinkD, filepath.FromSlash(rel)))
		if (err == nil) != want {
			t.Errorf("%s at sink: %v, want %v", rel, err == nil, want)
		}
	}
	select {
	case <-p.src.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up after the unsettled file settled")
	}
	time.Sleep(300 * time.Millisecond)
	p.sync(t)
	p.same(t, "fresh.txt")
}

func TestDeletes(t *testing.T) {
	for _, propagate := range []bool{false, true} {
		p := newPair(t, func(c *SourceConfig) { c.PropagateDeletes = propagate })
		write(t, p.srcD, "gone.txt", []byte("x"), time.Hour)
		p.sync(t)
		os.Remove(filepath.Join(p.srcD, "gone.txt"))
		p.sync(t)
		_, err := os.Stat(filepath.Join(p.sinkD, "gone.txt"))
		if exists := err == nil; exists == propagate {
			t.Errorf("propagate_deletes=%v: file at sink after delete: %v", propagate, exists)
		}
		if _, ok := p.st.KV["f/gone.txt"]; ok {
			t.Errorf("propagate_deletes=%v: deleted file still in source state", propagate)
		}
	}
}

func TestSinkRejectsBadChunkAndIsIdempotent(t *testing.T) {
	dst := t.TempDir()
	s, _ := NewSink(dst, quiet)
	data := []byte("content")
	h := batch.Header{Kind: "files", Files: []batch.FileEntry{{Op: "put", Path: "f.txt", Size: 7, Mode: 0o644, ModTime: time.Now(),
		SHA256: "4ad3ca73a0fb7b4fb24e3f1e3f3bdf5c9fe4a1d4a3a5f8e8e1e2f3f4a5b6c7d8", Chunks: 1, Length: 7, ChunkSHA256: "00"}}}
	if err := s.Apply(context.Background(), &h, bytes.NewReader(data), nil, nil); !errors.Is(err, ErrMismatch) {
		t.Errorf("bad chunk hash: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "f.txt")); err == nil {
		t.Error("file with a bad chunk appeared")
	}
	for _, bad := range []string{"../escape", "/abs", TempDir + "/x", "a\\b"} {
		h := batch.Header{Kind: "files", Files: []batch.FileEntry{{Op: "delete", Path: bad}}}
		if err := s.Apply(context.Background(), &h, bytes.NewReader(nil), nil, nil); err == nil {
			t.Errorf("unsafe path %q accepted", bad)
		}
	}
	// Applying the same batches twice leaves the same result.
	p := newPair(t, nil)
	write(t, p.srcD, "big.bin", pattern(64<<10*3, 7), time.Hour)
	outs := p.extract(t)
	for range 2 {
		for _, out := range outs {
			h := batch.Header{Kind: out.Kind, Files: out.Files}
			if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A crash after the final rename but before the commit replays only the
	// last batch: it must be recognised as done.
	last := outs[len(outs)-1]
	h = batch.Header{Kind: last.Kind, Files: last.Files}
	if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(last.Body), nil, nil); err != nil {
		t.Fatalf("replay of the final chunk: %v", err)
	}
	p.same(t, "big.bin")
}

// TestManySmallFiles: a batch's manifest is bounded whatever the folder
// holds; many empty files go in several batches, and so do their deletes.
func TestManySmallFiles(t *testing.T) {
	defer func(old int) { maxEntries = old }(maxEntries)
	maxEntries = 40
	p := newPair(t, func(c *SourceConfig) { c.PropagateDeletes = true })
	n := maxEntries*3 + 7
	for i := range n {
		write(t, p.srcD, filepath.Join("ok", strconv.Itoa(i)+".ok"), nil, time.Hour)
	}
	max := 0
	count := func() {
		for {
			out := connectors.Output{Limit: 1 << 20}
			err := p.src.Next(context.Background(), p.st, &out)
			if errors.Is(err, connectors.ErrIdle) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			max = maxInt(max, len(out.Files))
			h := batch.Header{Kind: out.Kind, Files: out.Files}
			if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, nil); err != nil {
				t.Fatal(err)
			}
			p.st.Commit(&out.Changes)
		}
	}
	count()
	if ents, _ := os.ReadDir(filepath.Join(p.sinkD, "ok")); len(ents) != n {
		t.Fatalf("%d of %d files arrived", len(ents), n)
	}
	os.RemoveAll(filepath.Join(p.srcD, "ok"))
	count()
	if ents, _ := os.ReadDir(filepath.Join(p.sinkD, "ok")); len(ents) != 0 {
		t.Errorf("%d files left after deleting the folder", len(ents))
	}
	if max > maxEntries {
		t.Errorf("a batch carried %d entries; the bound is %d", max, maxEntries)
	}
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
