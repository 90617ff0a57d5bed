package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/anchor"
)

// TestAuditAnchor: the hub signs checkpoints of its audit log and a running
// agent keeps them. Then, with the hub stopped, someone with its database
// cuts the last 20 records: the hub refuses to start on the cut log; once
// the hub's own checkpoints are deleted too, plain audit verify passes the
// cut, but audit verify --against the agent's exported checkpoints names
// the missing records and the agent that held the proof. A forged
// checkpoint is reported as not believed, not taken for a cut; a log
// rewritten and re-hashed, which the chain passes, is found too.
func TestAuditAnchor(t *testing.T) {
	h := newHub(t, hubOpts{extra: "audit_checkpoint_interval: 1s\n"})
	h.start()
	n := newNode(t, h, "gaj", nodeOpts{})
	n.start()
	held := func() []anchor.Checkpoint {
		var cps []anchor.Checkpoint
		out := mustRun(t, "qz-agent", "audit", "checkpoints", "--json", "--config", n.cfg)
		if err := json.Unmarshal([]byte(out), &cps); err != nil {
			t.Fatalf("audit checkpoints --json: %v\n%s", err, out)
		}
		return cps
	}
	holds := func(seq int) {
		t.Helper()
		waitFor(t, 30*time.Second, fmt.Sprintf("the agent to hold a checkpoint of record %d", seq), func() bool {
			cps := held()
			return len(cps) > 0 && cps[len(cps)-1].Seq == int64(seq)
		})
	}
	// A checkpoint inside what will remain of the log, then 25 records more.
	h.addNode("n-first")
	mid := auditRecords(t, h)
	holds(mid)
	for i := range 25 {
		h.addNode(fmt.Sprintf("n%02d", i))
	}
	total := auditRecords(t, h)
	holds(total)
	anchors := filepath.Join(t.TempDir(), "anchors")
	if out := mustRun(t, "qz-agent", "audit", "checkpoints", "--export", anchors, "--config", n.cfg); !strings.Contains(out, "written to") {
		t.Fatalf("export: %s", out)
	}
	if out := h.central("audit", "verify", "--against", anchors); !strings.Contains(out, "held by hub, gaj") {
		t.Fatalf("untouched log against the agent's checkpoints: %s", out)
	}
	n.p.stop()
	h.p.stop()

	// The cut: the last 20 records go.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(h.dir, "state", "central.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`DELETE FROM audit WHERE seq > ?`, total-20); err != nil {
		t.Fatal(err)
	}
	missing := fmt.Sprintf("records %d–%d", total-19, total)

	// The hub does not chain new records onto it.
	p := start(t, "hub on a cut log", filepath.Join(h.dir, "hub-cut.log"), "qz-central", "run", "--config", h.cfg)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the hub started on a log shorter than its own checkpoint")
	}
	if !logHas(p.log, missing+" were removed; restore the hub's state from a backup") {
		b, _ := os.ReadFile(p.log)
		t.Fatalf("the refusal does not name %s and the fix:\n%s", missing, b)
	}
	if p.cmd.ProcessState.ExitCode() == 0 {
		t.Fatal("the hub refused to start but exited 0")
	}

	// A careful intruder deletes the hub's own checkpoints as well.
	if _, err := db.Exec(`DELETE FROM audit_checkpoints`); err != nil {
		t.Fatal(err)
	}
	if out := h.central("audit", "verify"); !strings.Contains(out, fmt.Sprintf("audit log intact: %d records", total-20)) {
		t.Fatalf("plain verify: %s", out)
	}
	out, errOut, err := run("qz-central", "audit", "verify", "--against", anchors, "--config", h.cfg)
	want := regexp.MustCompile(missing + ` are missing: checkpoint \d{4}-\d\d-\d\d \d\d:\d\d CST from agent gaj signed head ` + strconv.Itoa(total))
	if err == nil || !want.MatchString(errOut) {
		t.Fatalf("verify --against the agent's checkpoints: %v\n%s%s\nwant %s", err, out, errOut, want)
	}

	// A forged checkpoint (a higher record, the signature left as it was)
	// is reported as such, and not believed.
	fs, err := anchor.ReadDir(anchors)
	if err != nil {
		t.Fatal(err)
	}
	last := fs[0].Checkpoints[len(fs[0].Checkpoints)-1]
	last.Seq += 100
	forgedDir := t.TempDir()
	if _, err := anchor.Write(forgedDir, anchor.File{Holder: "rsj", Checkpoints: []anchor.Checkpoint{last}}); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = run("qz-central", "audit", "verify", "--against", forgedDir, "--config", h.cfg)
	if err == nil || !strings.Contains(errOut, fmt.Sprintf("from agent rsj signed head %d is not believed: audit checkpoint: not signed by this hub", last.Seq)) {
		t.Fatalf("forged checkpoint: %v\n%s%s", err, out, errOut)
	}
	if strings.Contains(errOut, "missing") {
		t.Fatalf("a forged checkpoint was believed:\n%s", errOut)
	}

	// A rewrite: record 2 changed and every record after it re-hashed, so
	// the chain passes; the agent's checkpoint of record mid does not.
	recs := func() []store.AuditRecord {
		st, err := store.OpenSQLite(filepath.Join(h.dir, "state", "central.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		log, err := st.AuditLog(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return log
	}()
	for i := 1; i < len(recs); i++ {
		if i == 1 {
			recs[i].Detail = "name=某部门"
		}
		recs[i].Prev = recs[i-1].Hash
		recs[i].Hash = store.AuditHash(recs[i])
		if _, err := db.Exec(`UPDATE audit SET detail = ?, prev = ?, hash = ? WHERE seq = ?`, recs[i].Detail, recs[i].Prev, recs[i].Hash, recs[i].Seq); err != nil {
			t.Fatal(err)
		}
	}
	if out := h.central("audit", "verify"); !strings.Contains(out, "audit log intact") {
		t.Fatalf("plain verify after the re-hash: %s", out)
	}
	_, errOut, err = run("qz-central", "audit", "verify", "--against", anchors, "--config", h.cfg)
	if want := fmt.Sprintf("record %d is not the one the hub signed (checkpoint ", mid); err == nil || !strings.Contains(errOut, want) || !regexp.MustCompile(fmt.Sprintf(`one of records \d+–%d was changed and the log re-hashed after it`, mid)).MatchString(errOut) {
		t.Fatalf("verify --against after a rewrite: %v\n%s\nwant %q", err, errOut, want)
	}
}

// auditRecords is the number of records audit verify finds intact.
func auditRecords(t *testing.T, h *hub) int {
	t.Helper()
	out := h.central("audit", "verify")
	m := regexp.MustCompile(`audit log intact: (\d+) records`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("audit verify: %s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
