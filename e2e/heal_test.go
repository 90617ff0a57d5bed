package e2e

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
)

// auditCount counts the hub's audit records with an action, of a subject
// ("" for any).
func auditCount(h *hub, action, subject string) int {
	h.t.Helper()
	n := 0
	for _, line := range strings.Split(h.central("audit", "list"), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == action && (subject == "" || f[5] == subject) {
			n++
		}
	}
	return n
}

// healLine is a provider and a consumer of one folder resource on one hub,
// with the consumer not started yet.
type healLine struct {
	h          *hub
	prov, cons *node
	src, dst   string
	grant      string
}

func newHealLine(t *testing.T, name string, o nodeOpts) *healLine {
	t.Helper()
	l := &healLine{h: newHub(t, hubOpts{}), src: filepath.Join(t.TempDir(), "outbox"), dst: filepath.Join(t.TempDir(), "inbox")}
	os.MkdirAll(l.src, 0o755)
	l.h.start()
	o.resources = fileResource("prov."+name, l.src, "")
	l.prov = newNode(t, l.h, "prov-"+name, o)
	l.cons = newNode(t, l.h, "cons-"+name, nodeOpts{subs: fileSub("prov."+name, l.dst)})
	l.prov.start()
	l.grant = l.h.grant("prov."+name, "cons-"+name)
	waitFor(t, 10*time.Second, "provider to learn the grant", func() bool { return logHas(l.prov.logPath(), "grants changed") })
	return l
}

// uploaded waits until the hub stored batch seq of the line.
func (l *healLine) uploaded(t *testing.T, seq int) string {
	t.Helper()
	p := filepath.Join(l.h.payloadDir(), l.grant, strconv.Itoa(seq)+".qzb")
	waitFor(t, 30*time.Second, "batch "+strconv.Itoa(seq)+" stored at the hub", func() bool {
		_, err := os.Stat(p)
		return err == nil && l.prov.status().Spooled == 0
	})
	return p
}

// TestKeptUntilReceipt: the provider keeps each batch after the hub
// stored it, until the consumer's receipt for it is in, and then lets it go.
func TestKeptUntilReceipt(t *testing.T) {
	l := newHealLine(t, "k", nodeOpts{})
	sums := writeFiles(t, l.src, []fileSpec{{"a.txt", 10000}})
	l.uploaded(t, 1)
	time.Sleep(2 * time.Second) // a poll or two: nothing lets it go without a receipt
	if s := l.prov.status(); s.Kept != 1 || s.KeptBytes == 0 || s.SpoolBytes != s.KeptBytes {
		t.Fatalf("after upload: %d kept (%d bytes), %d bytes in the spool; want 1 kept, counted in the spool", s.Kept, s.KeptBytes, s.SpoolBytes)
	}
	l.cons.start()
	waitArrived(t, l.dst, sums, 30*time.Second)
	waitFor(t, 15*time.Second, "the kept batch to be let go after the receipt", func() bool {
		s := l.prov.status()
		return s.Kept == 0 && s.SpoolBytes == 0 && s.Counters[agent.CounterKeptReleased] == 1
	})
	if n := len(mustReadDir(t, filepath.Join(l.prov.state, "spool"))); n != 0 {
		t.Errorf("spool folder holds %d files after the receipt", n)
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if !e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestKeptLetGoForRoom: with the consumer away, kept batches make room for
// new ones within the quota, oldest first; nothing that was not uploaded
// is dropped, and everything arrives.
func TestKeptLetGoForRoom(t *testing.T) {
	const quota = 16 << 20
	l := newHealLine(t, "q", nodeOpts{quota: "16MiB"})
	var files []fileSpec
	for i := range 12 {
		files = append(files, fileSpec{"part-" + strconv.Itoa(i) + ".bin", 3 << 20})
	}
	sums := writeFiles(t, l.src, files) // 36 MiB, over twice the quota
	waitFor(t, time.Minute, "every batch uploaded", func() bool {
		s := l.prov.status()
		return s.Counters[agent.CounterUploaded] >= 36<<20 && s.Spooled == 0
	})
	s := l.prov.status()
	if s.SpoolBytes > quota || s.Counters[agent.CounterKeptDropped] == 0 || s.Kept == 0 {
		t.Errorf("spool %d bytes of %d, %d kept, %d let go for room: want within the quota, some kept, some let go", s.SpoolBytes, quota, s.Kept, s.Counters[agent.CounterKeptDropped])
	}
	l.cons.start()
	waitArrived(t, l.dst, sums, time.Minute)
}

// TestHealHubCopyDamaged: a batch damaged in the hub's store is refused by
// the consumer; the hub finds its copy damaged, drops it and asks the
// provider, which sends its kept copy under the same sequence number. The
// line goes on by itself; the audit log has one record of each kind.
func TestHealHubCopyDamaged(t *testing.T) {
	l := newHealLine(t, "h", nodeOpts{})
	sums := writeFiles(t, l.src, []fileSpec{{"a.txt", 10000}})
	stored := l.uploaded(t, 1)
	flipBit(t, stored)
	for k, v := range writeFiles(t, l.src, []fileSpec{{"b.txt", 20000}}) {
		sums[k] = v
	}
	l.uploaded(t, 2)
	l.cons.start()
	waitArrived(t, l.dst, sums, time.Minute)
	waitFor(t, 15*time.Second, "both receipts", func() bool { return l.prov.status().Kept == 0 })
	if n := l.cons.counter(agent.CounterBatchesApplied); n != 2 {
		t.Errorf("consumer applied %d batches, want 2", n)
	}
	if n := l.prov.counter(agent.CounterResent); n != 1 {
		t.Errorf("provider re-sent %d batches, want 1", n)
	}
	subject := l.grant + "/1"
	for action, want := range map[string]int{"delivery.reject": 1, "batch.damage": 1, "batch.store": 2} {
		if n := auditCount(l.h, action, subject); n != want {
			t.Errorf("%d %s records for %s, want %d", n, action, subject, want)
		}
	}
	if st := l.cons.status().Stopped; len(st) != 0 {
		t.Errorf("consumer still shows a stopped line: %+v", st)
	}
}

// TestHealDownloadDamaged: a batch damaged in the consumer's inbox (a
// download gone wrong) is fetched again; the hub's copy is not touched.
func TestHealDownloadDamaged(t *testing.T) {
	l := newHealLine(t, "c", nodeOpts{})
	sums := writeFiles(t, l.src, []fileSpec{{"a.txt", 10000}})
	stored := l.uploaded(t, 1)
	b, err := os.ReadFile(stored)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	inbox := filepath.Join(l.cons.state, "inbox")
	os.MkdirAll(inbox, 0o750)
	if err := os.WriteFile(filepath.Join(inbox, l.grant+"-1.qzb.part"), b, 0o640); err != nil {
		t.Fatal(err)
	}
	l.cons.start()
	waitArrived(t, l.dst, sums, 30*time.Second)
	if n := l.cons.counter(agent.CounterBatchesApplied); n != 1 {
		t.Errorf("consumer applied %d batches, want 1", n)
	}
	if n := auditCount(l.h, "batch.damage", ""); n != 0 {
		t.Errorf("hub dropped its good copy (%d batch.damage records)", n)
	}
}

// spoolDamaged waits for a batch sealed while the hub is down, stops the
// provider, flips a bit in the spooled file, starts both again, and
// returns the batch's sequence number.
func spoolDamaged(t *testing.T, h *hub, prov *node) string {
	t.Helper()
	waitFor(t, 10*time.Second, "a batch to be recorded in the spool", func() bool { return prov.status().Spooled > 0 })
	batchFile := firstFile(t, filepath.Join(prov.state, "spool"), ".qzb")
	prov.p.stop()
	flipBit(t, batchFile)
	h.start()
	prov.start()
	name := strings.TrimSuffix(filepath.Base(batchFile), ".qzb")
	return name[strings.LastIndex(name, "-")+1:]
}

// checkMadeUp checks the provider's account of a batch it made up for, and
// that the consumer applied every batch exactly once.
func checkMadeUp(t *testing.T, h *hub, prov, cons *node, grant, seq string, rejects int) {
	t.Helper()
	waitFor(t, 30*time.Second, "the make-up copy to be done and the note cleared", func() bool {
		return len(prov.status().Stopped) == 0 && prov.status().Kept == 0
	})
	ps := prov.status()
	if ps.Counters[agent.CounterReproduced] != 1 || ps.Quarantine != 0 {
		t.Errorf("provider made up for %d batches (%d still quarantined), want 1 (0)", ps.Counters[agent.CounterReproduced], ps.Quarantine)
	}
	if !logHas(prov.logPath(), "source changed: a full copy was started") {
		t.Error("provider did not say a full copy was started")
	}
	cs := cons.status()
	if applied := cs.Applied[grant]; applied != cs.Counters[agent.CounterBatchesApplied] || applied < 2 {
		t.Errorf("consumer is at batch %d after applying %d: want every batch once, the empty one and the copy", applied, cs.Counters[agent.CounterBatchesApplied])
	}
	if n := auditCount(h, "batch.reject", grant+"/"+seq); n != rejects {
		t.Errorf("%d batch.reject records for the damaged batch, want %d", n, rejects)
	}
}

// TestHealSpoolDamaged: a batch damaged in the provider's spool is refused
// by the hub; the provider sends its sequence number out empty and starts
// a full copy, and the consumer's folder ends identical to the provider's.
func TestHealSpoolDamaged(t *testing.T) {
	h := newHub(t, hubOpts{})
	src, dst := filepath.Join(t.TempDir(), "outbox"), filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	h.start()
	prov := newNode(t, h, "prov-s", nodeOpts{resources: fileResource("prov.s", src, "")})
	cons := newNode(t, h, "cons-s", nodeOpts{subs: fileSub("prov.s", dst)})
	prov.start()
	cons.start()
	g := h.grant("prov.s", "cons-s")
	waitFor(t, 10*time.Second, "provider to learn the grant", func() bool { return logHas(prov.logPath(), "grants changed") })
	h.p.stop()
	sums := writeFiles(t, src, []fileSpec{{"a.txt", 10000}, {"sub/b.txt", 30000}})
	seq := spoolDamaged(t, h, prov)
	for k, v := range writeFiles(t, src, []fileSpec{{"c.txt", 5000}}) {
		sums[k] = v
	}
	waitArrived(t, dst, sums, time.Minute)
	checkMadeUp(t, h, prov, cons, g, seq, 1)
}

// TestHealSpoolDamagedTable is TestHealSpoolDamaged for a table line.
func TestHealSpoolDamagedTable(t *testing.T) {
	dir := t.TempDir()
	srcPath, dstPath := filepath.Join(dir, "src.db"), filepath.Join(dir, "dst.db")
	src, err := sql.Open("sqlite", srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Exec(`CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL, updated_at DATETIME(3) NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	insert := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if _, err := src.Exec(`INSERT INTO people VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))`, i, fmt.Sprintf("人员%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	h := newHub(t, hubOpts{})
	h.start()
	prov := newNode(t, h, "prov-st", nodeOpts{resources: fmt.Sprintf("  - id: prov.people\n    kind: sqlite\n    dsn: %s\n    table: people\n    watermark: updated_at\n    lag: 0s\n    poll: 200ms\n", srcPath)})
	cons := newNode(t, h, "cons-st", nodeOpts{subs: fmt.Sprintf("  - id: prov.people\n    kind: sqlite\n    dsn: %s\n    table: people\n    create_table: true\n", dstPath)})
	prov.start()
	cons.start()
	g := h.grant("prov.people", "cons-st")
	waitFor(t, 10*time.Second, "provider to learn the grant", func() bool { return logHas(prov.logPath(), "grants changed") })
	time.Sleep(time.Second) // whatever an empty table makes goes out first
	h.p.stop()
	insert(0, 300)
	seq := spoolDamaged(t, h, prov)
	insert(300, 400)
	dst, err := sql.Open("sqlite", dstPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	digest := func(db *sql.DB) string {
		var n int
		var sum sql.NullString
		db.QueryRow(`SELECT COUNT(*), group_concat(id || ':' || name || ':' || updated_at, ',') FROM (SELECT * FROM people ORDER BY id)`).Scan(&n, &sum)
		return fmt.Sprintf("%d rows: %s", n, sum.String)
	}
	waitFor(t, time.Minute, "the consumer's table to equal the provider's", func() bool { return digest(dst) == digest(src) })
	checkMadeUp(t, h, prov, cons, g, seq, 1)
}

// TestHealHubCopyDamagedNotKept: the hub's copy is damaged and the
// provider no longer keeps the batch (its file was lost); the provider
// makes up for it with an empty batch and a full copy.
func TestHealHubCopyDamagedNotKept(t *testing.T) {
	l := newHealLine(t, "n", nodeOpts{})
	sums := writeFiles(t, l.src, []fileSpec{{"a.txt", 10000}, {"b.txt", 20000}})
	stored := l.uploaded(t, 1)
	waitFor(t, 10*time.Second, "the batch to be kept", func() bool { return l.prov.status().Kept == 1 })
	l.prov.p.stop()
	for _, f := range mustReadDir(t, filepath.Join(l.prov.state, "spool")) {
		os.Remove(filepath.Join(l.prov.state, "spool", f))
	}
	flipBit(t, stored)
	l.prov.start()
	l.cons.start()
	waitArrived(t, l.dst, sums, time.Minute)
	checkMadeUp(t, l.h, l.prov, l.cons, l.grant, "1", 0)
	subject := l.grant + "/1"
	for action, want := range map[string]int{"delivery.reject": 1, "batch.damage": 1} {
		if n := auditCount(l.h, action, subject); n != want {
			t.Errorf("%d %s records for %s, want %d", n, action, subject, want)
		}
	}
}
