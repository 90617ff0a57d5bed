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
// CA and nodes, the audit chain intact, new files arriving. Certificates
// live a minute, so both agents renew theirs after the backup: the restored
// hub, which never saw those renewals, adopts the certificates its CA
// issued after the backup instead of refusing them.
func TestHubBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("waits about a minute for the agents to renew their certificates after the backup")
	}
	src, dst := filepath.Join(t.TempDir(), "outbox"), filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"a.bin", 2 << 20}, {"报表.csv", 5000}})
	h := newHub(t, hubOpts{extra: "cert_validity: 1m\n"})
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
	for _, n := range []*node{prov, cons} {
		waitFor(t, 90*time.Second, n.id+" to renew its certificate after the backup", func() bool {
			return logHas(n.logPath(), `"msg":"certificate renewed"`)
		})
	}

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
	for _, id := range []string{"prov-1", "cons-1"} {
		if !strings.Contains(h.central("node", "list"), id) {
			t.Errorf("node %s is not listed after the restore", id)
		}
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
	if n := strings.Count(h.central("audit", "list"), "node.adopt"); n < 2 {
		t.Errorf("the restored hub adopted %d renewed certificates, want both agents'", n)
	}
	if logHas(h.p.log, "handshake refused") {
		t.Error("the restored hub refused a certificate; see its log")
	}
}
