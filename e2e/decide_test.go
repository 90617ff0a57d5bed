package e2e

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

// folderCatalog is a catalog entry for a folder of the given category.
func folderCatalog(name, code, category string) string {
	return fmt.Sprintf(`    catalog:
      name: %s
      code: %s
      format: file
      department: 市公安局
      category: %s
      legal_basis: 《中华人民共和国户口登记条例》
      frequency: daily
      modes: [batch]
      fields:
        - {name: 档案, type: file}
`, name, code, category)
}

// hubDB opens the stopped hub's database, as someone with the hub
// server's disk would.
func hubDB(t *testing.T, h *hub) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(h.dir, "state", "central.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// refusedLine waits for the provider's status to show grant g refused,
// and returns the reason.
func refusedLine(t *testing.T, n *node, g string) string {
	t.Helper()
	var why string
	waitFor(t, 60*time.Second, "status to show grant "+g+" refused", func() bool {
		for _, l := range n.status().Stopped {
			if l.Grant == g && l.Side == "refused" {
				why = l.Reason
				return true
			}
		}
		return false
	})
	return why
}

// TestProviderDecides: the hub's operator cannot make a grant for a
// conditional or a none resource (locally or as the remote operator role);
// the provider's own approval through the workflow makes one that its
// agent serves; grants written straight into the hub's database, for the
// conditional and the none resource, are refused by the provider's agent:
// no batch is sealed for them, its status shows them, the hub's audit log
// records the refusal, and qz-agent grants says why.
func TestProviderDecides(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	condDir, noneDir, openDir, in, in2 := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	sums := writeFiles(t, condDir, []fileSpec{{"户籍/2026.csv", 20 << 10}})
	writeFiles(t, noneDir, []fileSpec{{"涉密/名单.csv", 20 << 10}})
	openSums := writeFiles(t, openDir, []fileSpec{{"公开/统计.csv", 10 << 10}})
	resources := fileResource("gaj.cond", condDir, folderCatalog("户籍档案", "GA-2026-101", "conditional")) +
		fileResource("gaj.closed", noneDir, folderCatalog("涉密名单", "GA-2026-102", "none")) +
		fileResource("gaj.open", openDir, "")
	prov := newNode(t, h, "gaj", nodeOpts{resources: resources})
	cons := newNode(t, h, "mzj", nodeOpts{subs: fileSub("gaj.cond", in) + fileSub("gaj.open", in2)})
	other := newNode(t, h, "wjw", nodeOpts{})
	prov.start()
	cons.start()
	waitFor(t, 15*time.Second, "the catalog entries", func() bool {
		l := h.central("catalog", "list")
		return strings.Contains(l, "gaj.cond") && strings.Contains(l, "gaj.closed")
	})
	h.central("catalog", "approve", "gaj.cond", "--version", "1")
	h.central("catalog", "approve", "gaj.closed", "--version", "1")

	// The operator's shortcut: refused where the provider decides.
	bob := filepath.Join(t.TempDir(), "bob")
	h.central("operator", "add", "bob", "--role", "operator", "--out", bob)
	for _, args := range [][]string{
		{"--config", h.cfg},
		{"--remote", h.addr, "--operator", bob},
	} {
		expectFail(t, "qz-central", append([]string{"grant", "add", "--resource", "gaj.cond", "--consumer", "mzj"}, args...), "gaj.cond is conditional", "qz-agent apply", "qz-agent approve")
		expectFail(t, "qz-central", append([]string{"grant", "add", "--resource", "gaj.closed", "--consumer", "mzj"}, args...), "gaj.closed is not shared", "category none")
	}
	openGrant := h.grant("gaj.open", "mzj") // no catalog entry: as the provider's config publishes it
	waitArrived(t, in2, openSums, 30*time.Second)

	// The workflow: the provider's own approval, signed and kept by its agent.
	g := h.approved(prov, cons, "gaj.cond", "batch", "档案", "--days", "30")
	waitArrived(t, in, sums, 30*time.Second)
	out := mustRun(t, "qz-agent", "grants", "--config", prov.cfg)
	if !strings.Contains(out, g) || !strings.Contains(out, "serving (approval a-") || !strings.Contains(out, "30 days") {
		t.Fatalf("qz-agent grants does not show the approval and the grant served:\n%s", out)
	}

	// Grants written into the hub's database by hand.
	h.p.stop()
	db := hubDB(t, h)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for _, r := range []string{"gaj.cond", "gaj.closed"} {
		if _, err := db.Exec(`INSERT INTO grants (id, resource, provider, consumer, mode, fields, status, created) VALUES (?, ?, 'gaj', 'wjw', 'batch', '档案', 'active', ?)`, "g-hand-"+r[4:], r, now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`UPDATE versions SET value = value + 1 WHERE name = 'grants'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	h.start()
	other.start()
	if why := refusedLine(t, prov, "g-hand-cond"); !strings.Contains(why, "has approved no application") {
		t.Errorf("the hand-made conditional grant is refused for: %s", why)
	}
	if why := refusedLine(t, prov, "g-hand-closed"); !strings.Contains(why, "不予共享") {
		t.Errorf("the hand-made none grant is refused for: %s", why)
	}
	// The provider goes on for the grants it serves: a file written now
	// reaches mzj, so the producer has passed over the refused grants.
	more := writeFiles(t, condDir, []fileSpec{{"户籍/2027.csv", 10 << 10}})
	waitArrived(t, in, more, 30*time.Second)
	for _, hand := range []string{"g-hand-cond", "g-hand-closed"} {
		if l := h.central("batch", "list", "--grant", hand); strings.Count(l, "\n") > 0 {
			t.Errorf("the hub holds batches of %s:\n%s", hand, l)
		}
	}
	st, err := sql.Open("sqlite", filepath.Join(prov.state, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var sealed int
	st.QueryRow(`SELECT COUNT(*) FROM seqs WHERE grant_id LIKE 'g-hand-%'`).Scan(&sealed)
	if sealed != 0 {
		t.Errorf("the provider sealed batches for %d hand-made grants", sealed)
	}
	waitFor(t, 15*time.Second, "the refusals in the hub's audit log", func() bool {
		n := 0
		for _, l := range strings.Split(h.central("audit", "list"), "\n") {
			if strings.Contains(l, "grant.refuse") && strings.Contains(l, "g-hand-") && strings.Contains(l, "the provider does not serve it") {
				n++
			}
		}
		return n >= 2
	})
	out = mustRun(t, "qz-agent", "grants", "--config", prov.cfg)
	for _, want := range []string{"g-hand-cond", "REFUSED: resource gaj.cond is conditional", "g-hand-closed", "REFUSED: resource gaj.closed is not shared", openGrant} {
		if !strings.Contains(out, want) {
			t.Errorf("qz-agent grants lacks %q:\n%s", want, out)
		}
	}
	if s := mustRun(t, "qz-agent", "status", "--config", prov.cfg); !strings.Contains(s, "STOPPED") || !strings.Contains(s, "g-hand-cond (refused)") {
		t.Errorf("qz-agent status does not show the refused grant:\n%s", s)
	}
}

// TestPeerKeySwapRefused: a consumer pins the provider's seal key on first
// use. A key put into the hub's database by hand (no re-enrolment, so no
// audited enrolment names it) is refused: the batch sealed with it is not
// applied, and status and qz-agent peers show the refused key.
func TestPeerKeySwapRefused(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	out, in := t.TempDir(), t.TempDir()
	first := writeFiles(t, out, []fileSpec{{"before.txt", 2000}})
	prov := newNode(t, h, "gaj", nodeOpts{resources: fileResource("gaj.files", out, "")})
	cons := newNode(t, h, "mzj", nodeOpts{subs: fileSub("gaj.files", in)})
	prov.start()
	cons.start()
	h.grant("gaj.files", "mzj")
	waitArrived(t, in, first, 30*time.Second)
	self := mustRun(t, "qz-agent", "peers", "--config", prov.cfg)
	fp := strings.TrimSpace(self[strings.Index(self, "fingerprint")+len("fingerprint"):])
	fp = strings.TrimSpace(strings.Split(fp, "\n")[0])
	if peers := mustRun(t, "qz-agent", "peers", "--config", cons.cfg); !strings.Contains(peers, fp) || !strings.Contains(peers, "pinned on first use") {
		t.Fatalf("the consumer's peers do not show gaj's fingerprint %s:\n%s", fp, peers)
	}

	// Someone with the hub's disk swaps gaj's key for one of their own.
	prov.p.stop()
	h.p.stop()
	k, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prov.state, "identity", "seal.key"), k.MarshalPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	db := hubDB(t, h)
	if _, err := db.Exec(`INSERT INTO seal_keys (node_id, key_id, pub, added) VALUES ('gaj', ?, ?, ?)`, k.KeyID(), k.Public().String(), time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE nodes SET seal_pub = ? WHERE id = 'gaj'`, k.Public().String()); err != nil {
		t.Fatal(err)
	}
	db.Close()
	h.start()
	prov.start()
	second := writeFiles(t, out, []fileSpec{{"after.txt", 3000}})
	waitFor(t, 60*time.Second, "the consumer to refuse the swapped key", func() bool {
		for _, w := range cons.status().KeyWarnings {
			if w.Node == "gaj" && w.KeyID == k.KeyID() && w.Status == "refused" {
				return true
			}
		}
		return false
	})
	if arrived(in, second) {
		t.Fatal("a batch sealed with the swapped key was applied")
	}
	rj := cons.status().Rejections
	if len(rj) == 0 || !strings.Contains(rj[len(rj)-1].Reason, "without an audited re-enrolment") {
		t.Errorf("the consumer's rejections: %+v", rj)
	}
	peers := mustRun(t, "qz-agent", "peers", "--config", cons.cfg)
	if !strings.Contains(peers, "REFUSED") || !strings.Contains(peers, k.KeyID()) {
		t.Errorf("qz-agent peers does not show the refused key:\n%s", peers)
	}
	if s := mustRun(t, "qz-agent", "status", "--config", cons.cfg); !strings.Contains(s, "KEY REFUSED") {
		t.Errorf("qz-agent status does not warn of the refused key:\n%s", s)
	}
}
