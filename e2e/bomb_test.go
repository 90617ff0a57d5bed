package e2e

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/transport"
)

// zeroReader reads as endless zero bytes.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// peakRSS reads a process's peak resident set (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestBombBatchRejected: a provider seals a small batch whose zstd body
// decompresses to a 2 GiB file in one piece (issue 14: the consumer
// allocated it, 2.1 GB, died and met it again at every start). The consumer
// refuses it on its declared sizes, before decompressing anything: the
// batch is rejected and audited, that grant's line stops naming the limit,
// the consumer's memory stays small, and its other line goes on.
func TestBombBatchRejected(t *testing.T) {
	h := newHub(t, hubOpts{})
	srcBomb, srcOK := filepath.Join(t.TempDir(), "bomb"), filepath.Join(t.TempDir(), "ok")
	dstBomb, dstOK := filepath.Join(t.TempDir(), "bomb"), filepath.Join(t.TempDir(), "ok")
	os.MkdirAll(srcBomb, 0o755)
	os.MkdirAll(srcOK, 0o755)
	h.start()
	prov := newNode(t, h, "prov-bomb", nodeOpts{resources: fileResource("prov.bomb", srcBomb, "") + fileResource("prov.ok", srcOK, "")})
	cons := newNode(t, h, "cons-bomb", nodeOpts{subs: fileSub("prov.bomb", dstBomb) + fileSub("prov.ok", dstOK)})
	prov.start()
	cons.start()
	gBomb := h.grant("prov.bomb", "cons-bomb")
	h.grant("prov.ok", "cons-bomb")
	waitArrived(t, dstOK, writeFiles(t, srcOK, []fileSpec{{"before.txt", 5000}}), 30*time.Second)

	// The provider's folder for prov.bomb stays empty, so sequence 1 of
	// its grant is free: seal the bomb there with the provider's own key
	// and upload it as the provider does.
	id, err := agent.LoadIdentity(filepath.Join(prov.state, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 2 << 30
	sum := strings.Repeat("ab", 32) // never checked: the batch must be refused before
	hd := batch.Header{
		Kind: batch.KindFiles, Resource: "prov.bomb", Grant: gBomb, Provider: "prov-bomb", Consumer: "cons-bomb",
		Sequence: 1, Compression: batch.CompressionZstd, Level: batch.LevelFastest, BodyLen: size,
		Files: []batch.FileEntry{{Op: batch.OpPut, Path: "bomb.bin", Size: size, Mode: 0o644, ModTime: time.Now().UTC(),
			SHA256: sum, ChunkSize: size, Chunks: 1, Length: size, ChunkSHA256: sum}},
	}
	bombPath := filepath.Join(t.TempDir(), "bomb.qzb")
	n, err := batch.Create(bombPath, hd, io.LimitReader(zeroReader{}, size), id.Seal)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the bomb: a %d KB batch declaring a %d MiB file", n>>10, size>>20)
	f, err := os.Open(bombPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &transport.Client{Hub: h.addr, TLS: id.ClientTLS(h.addr), Mode: transport.TCP}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, c.URL("/v1/batches/"+gBomb+"/1"), f)
	req.ContentLength = n
	req.Header.Set(api.HeaderOffset, "0")
	req.Header.Set(api.HeaderTotal, strconv.FormatInt(n, 10))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("hub answered the bomb's upload with %s, want 201 (the hub never decompresses, so it stores it)", resp.Status)
	}

	waitFor(t, 60*time.Second, "the consumer to reject the bomb", func() bool {
		for _, r := range cons.status().Rejections {
			if r.Grant == gBomb && r.Side == "consumer" && strings.Contains(r.Reason, "receiver limit") {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "status to show the bomb's line stopped, naming the limit", func() bool {
		for _, l := range cons.status().Stopped {
			if l.Grant == gBomb && l.Side == "consumer" && strings.Contains(l.Reason, "in one piece") {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the hub to audit the rejection", func() bool {
		return strings.Contains(h.central("audit", "list"), "delivery.reject")
	})
	// The other line goes on.
	waitArrived(t, dstOK, writeFiles(t, srcOK, []fileSpec{{"after.txt", 7000}, {"sub/after-2.bin", 3 << 20}}), 30*time.Second)

	select {
	case <-cons.p.done:
		t.Fatal("the consumer exited")
	default:
	}
	rss := peakRSS(t, cons.p.cmd.Process.Pid)
	t.Logf("consumer's peak RSS: %.1f MiB", float64(rss)/(1<<20))
	if rss > 128<<20 {
		t.Errorf("consumer's peak RSS is %d MiB, more than 128 MiB", rss>>20)
	}
	if _, err := os.Stat(filepath.Join(dstBomb, "bomb.bin")); err == nil {
		t.Error("the bomb's file appeared at the consumer")
	}
	if n := cons.counter(agent.CounterBatchesApplied); n < 2 {
		t.Errorf("consumer applied %d batches, want the other line's", n)
	}
}
