package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
)

// sampleFiles is the folder every transfer test publishes: a large file,
// small ones, a nested folder and Chinese names.
func sampleFiles(large int64) []fileSpec {
	return []fileSpec{
		{"large.bin", large},
		{"readme.txt", 1234},
		{"empty.dat", 0},
		{"报表/二〇二六年第一季度.xlsx", 300 << 10},
		{"nested/deeper/data.csv", 5 << 20},
	}
}

// transfer publishes a folder from one agent to another through the hub and
// checks it arrives byte-identical; it returns the agents for more checks.
func transfer(t *testing.T, h *hub, transport string, large int64) (*node, *node) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, sampleFiles(large))
	h.start()
	prov := newNode(t, h, "prov-1", nodeOpts{transport: transport, resources: fileResource("prov.reports", src, "")})
	cons := newNode(t, h, "cons-1", nodeOpts{transport: transport, subs: fileSub("prov.reports", dst)})
	prov.start()
	cons.start()
	h.grant("prov.reports", "cons-1")
	waitArrived(t, dst, sums, 3*time.Minute)
	return prov, cons
}

func TestFolderArrivesOverQUIC(t *testing.T) {
	h := newHub(t, hubOpts{})
	prov, cons := transfer(t, h, "auto", 200<<20)
	for _, n := range []*node{prov, cons} {
		if !logHas(n.logPath(), `"transport":"quic"`) {
			t.Errorf("%s did not connect over QUIC; see %s", n.id, n.logPath())
		}
		if logHas(n.logPath(), `"transport":"tcp"`) {
			t.Errorf("%s fell back to TCP although QUIC was available", n.id)
		}
		if tr := n.status().Transport; tr != "quic" {
			t.Errorf("%s status reports transport %q, want quic", n.id, tr)
		}
	}
	waitFor(t, 30*time.Second, "a receipt at the hub for every stored batch", func() bool {
		list := h.central("batch", "list")
		return strings.Count(list, "\n") > 1 && !strings.Contains(list, "waiting")
	})
	if n := cons.counter(agent.CounterBatchesApplied); n < 50 {
		t.Errorf("consumer applied %d batches; 200 MiB in 4 MiB chunks needs at least 50", n)
	}
	if rj := cons.status().Rejections; len(rj) != 0 {
		t.Errorf("consumer recorded rejections in a clean transfer: %+v", rj)
	}
}

func TestFolderArrivesOverTCPWhenQUICUnavailable(t *testing.T) {
	h := newHub(t, hubOpts{noQUIC: true})
	prov, cons := transfer(t, h, "auto", 200<<20)
	for _, n := range []*node{prov, cons} {
		if !logHas(n.logPath(), `"transport":"tcp"`) {
			t.Errorf("%s did not log the TCP fallback; see %s", n.id, n.logPath())
		}
		if tr := n.status().Transport; tr != "tcp" {
			t.Errorf("%s status reports transport %q, want tcp", n.id, tr)
		}
	}
}
