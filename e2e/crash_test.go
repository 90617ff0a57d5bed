package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
)

// TestKillNineMidTransfer kills the consumer, then the provider, then the
// hub with SIGKILL in the middle of a 200 MiB transfer. After restarts the
// file arrives complete, never shows partially under its name, and the
// bytes sent again are bounded by a few chunks per kill.
func TestKillNineMidTransfer(t *testing.T) {
	const chunk = 1 << 20
	const large = 200 << 20
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"big/large.bin", large}, {"small.txt", 100}})
	h.start()
	res := fileResource("prov.big", src, "    chunk_size: 1MiB\n")
	prov := newNode(t, h, "prov-k", nodeOpts{resources: res, maxBytes: "1MiB"})
	cons := newNode(t, h, "cons-k", nodeOpts{subs: fileSub("prov.big", dst), maxBytes: "1MiB"})
	prov.start()
	cons.start()
	h.grant("prov.big", "cons-k")

	// Watch the target: the large file must never be visible incomplete.
	checkWhole := watchWhole(t, filepath.Join(dst, "big", "large.bin"), large)

	applied := func() int64 { return cons.counter(agent.CounterBatchesApplied) }
	uploaded := func() int64 { return prov.counter(agent.CounterUploaded) }

	waitFor(t, 2*time.Minute, "consumer to apply 20 batches", func() bool { return applied() >= 20 })
	if applied() >= large/chunk {
		t.Errorf("the consumer finished before its kill: this run tested nothing mid-transfer")
	}
	cons.p.kill()
	t.Logf("%s killed consumer after %d applied batches", time.Now().Format("15:04:05.000"), applied())
	cons.start()

	waitFor(t, 2*time.Minute, "provider to upload 80 MiB", func() bool { return uploaded() >= 80<<20 })
	if uploaded() >= large {
		t.Errorf("the provider finished before its kill: this run tested nothing mid-transfer")
	}
	prov.p.kill()
	t.Logf("%s killed provider after %d uploaded bytes", time.Now().Format("15:04:05.000"), uploaded())
	prov.start()

	waitFor(t, 2*time.Minute, "provider to upload 140 MiB", func() bool { return uploaded() >= 140<<20 })
	if uploaded() >= large {
		t.Errorf("the upload finished before the hub's kill: this run tested nothing mid-transfer")
	}
	h.p.kill()
	t.Logf("%s killed hub after %d uploaded bytes", time.Now().Format("15:04:05.000"), uploaded())
	h.start()

	t0 := time.Now()
	waitArrived(t, dst, sums, 3*time.Minute)
	t.Logf("arrived %s after the hub restart", time.Since(t0).Round(time.Millisecond))
	if os.Getenv("QZ_KEEP_LOGS") != "" {
		for _, p := range []string{prov.logPath(), cons.logPath(), h.p.log} {
			b, _ := os.ReadFile(p)
			os.WriteFile(filepath.Join(os.Getenv("QZ_KEEP_LOGS"), filepath.Base(filepath.Dir(p))+"-"+filepath.Base(p)), b, 0o644)
		}
	}
	checkWhole()

	ps, cs := prov.status(), cons.status()
	resentUp := ps.Counters[agent.CounterUploadAttempted] - ps.Counters[agent.CounterUploaded]
	resentDown := cs.Counters[agent.CounterDownloadAttempted] - cs.Counters[agent.CounterApplied]
	t.Logf("re-sent bytes: upload %d, download %d (chunk %d)", resentUp, resentDown, chunk)
	// Each kill may cost the batch in flight on each leg: a few chunks in all.
	const bound = 6 * (chunk + 64<<10)
	if resentUp > bound {
		t.Errorf("provider re-sent %d bytes after three kills; want at most %d", resentUp, bound)
	}
	if resentDown > bound {
		t.Errorf("consumer re-fetched %d bytes after three kills; want at most %d", resentDown, bound)
	}
	if resentUp < 0 || resentDown < 0 {
		t.Errorf("counters inconsistent: upload %d, download %d", resentUp, resentDown)
	}
}
