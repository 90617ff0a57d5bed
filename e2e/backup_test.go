package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHubBackupRestore backs the hub up while it serves, loses its state
// folder, restores it, and shows the agents going on as before: the same
// CA and nodes, the audit chain intact, new files arriving.
func TestHubBackupRestore(t *testing.T) {
	src, dst := filepath.Join(t.TempDir(), "outbox"), filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"a.bin", 2 << 20}, {"报表.csv", 5000}})
	h := newHub(t, hubOpts{})
	h.start()
	prov := newNode(t, h, "prov-1", nodeOpts{resources: fileResource("prov.reports", src, "")})
	cons := newNode(t, h, "cons-1", nodeOpts{subs: fileSub("prov.reports", dst)})
	prov.start()
	cons.start()
	h.grant("prov.reports", "cons-1")
	waitArrived(t, dst, sums, time.Minute)

	bk := filepath.Join(t.TempDir(), "hub-backup")
	if out := h.central("backup", bk); !strings.Contains(out, "hub backed up to") {
		t.Fatalf("backup: %s", out)
	}
	expectFail(t, "qz-central", []string{"backup", bk, "--config", h.cfg}, "is not empty")
	nodesBefore := h.central("node", "list")

	h.p.kill()
	state := filepath.Join(h.dir, "state")
	if err := os.Rename(state, state+".lost"); err != nil {
		t.Fatal(err)
	}
	if out := h.central("restore", bk); !strings.Contains(out, "hub restored from") {
		t.Fatalf("restore: %s", out)
	}
	expectFail(t, "qz-central", []string{"restore", bk, "--config", h.cfg}, "already holds a hub")
	h.start()
	if got := h.central("node", "list"); got != nodesBefore {
		t.Errorf("nodes after restore:\n%s\nbefore:\n%s", got, nodesBefore)
	}
	if out := h.central("audit", "verify"); !strings.Contains(out, "OK") && !strings.Contains(out, "intact") {
		t.Errorf("audit verify after restore: %s", out)
	}
	audit := h.central("audit", "list")
	if !strings.Contains(audit, "hub.backup") || !strings.Contains(audit, "hub.restore") {
		t.Errorf("backup and restore are not in the audit log")
	}
	for k, v := range writeFiles(t, src, []fileSpec{{"after-restore.bin", 1 << 20}}) {
		sums[k] = v
	}
	waitArrived(t, dst, sums, time.Minute)
}
