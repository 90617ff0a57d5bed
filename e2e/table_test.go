package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/internal/mariadbtest"
)

// peopleDDL is a department's table with the types that are hard to move
// exactly: Chinese text, decimals, microsecond datetimes, NULLs and blobs.
const peopleDDL = `CREATE TABLE people (
  id BIGINT NOT NULL PRIMARY KEY,
  id_no CHAR(18) NOT NULL,
  name VARCHAR(50) NOT NULL,
  address VARCHAR(200),
  amount DECIMAL(18,4),
  born DATE,
  photo BLOB,
  note TEXT,
  deleted TINYINT NOT NULL DEFAULT 0,
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  KEY by_update (updated_at, id)
)`

// fillPeople inserts rows lo..hi with MariaDB's sequence engine.
func fillPeople(t *testing.T, db *sql.DB, lo, hi int) {
	t.Helper()
	q := fmt.Sprintf(`INSERT INTO people (id, id_no, name, address, amount, born, photo, note)
		SELECT seq, LPAD(seq, 18, '1'), CONCAT('张', ELT(1 + seq %% 5, '三', '丽', '伟', '芳', '娜'), seq),
			IF(seq %% 11 = 0, NULL, CONCAT('北京市海淀区中关村大街', seq, '号')),
			IF(seq %% 13 = 0, NULL, (seq * 7919 %% 100000000) / 10000 - 5000),
			DATE_ADD('1950-01-01', INTERVAL seq %% 20000 DAY),
			IF(seq %% 17 = 0, UNHEX(CONCAT('00FF', HEX(seq))), NULL),
			IF(seq %% 3 = 0, '', IF(seq %% 3 = 1, NULL, REPEAT('备注', seq %% 20)))
		FROM seq_%d_to_%d`, lo, hi)
	if _, err := db.Exec(q); err != nil {
		t.Fatal(err)
	}
}

// tableDigest is the test's own account of a table: the row count and an
// order-independent checksum over every column of the live rows, NULLs
// told apart from empty strings.
func tableDigest(t *testing.T, db *sql.DB, where string) string {
	t.Helper()
	var n int64
	var sum sql.NullString
	q := `SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, id_no, name, IFNULL(address, '∅'), IFNULL(amount, '∅'),
		IFNULL(born, '∅'), IFNULL(HEX(photo), '∅'), IFNULL(note, '∅'), updated_at))) FROM people ` + where
	if err := db.QueryRow(q).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d rows, checksum %s", n, sum.String)
}

func mysqlResource(id, dsn, extra string) string {
	return fmt.Sprintf("  - id: %s\n    kind: mysql\n    dsn: %q\n    table: people\n    strategy: incremental\n    watermark: updated_at\n    lag: 300ms\n    poll: 200ms\n    page_rows: 2000\n    soft_delete: {column: deleted, value: \"1\"}\n    columns: [id, id_no, name, address, amount, born, photo, note, updated_at]\n%s", id, dsn, extra)
}

func mysqlSub(id, dsn string) string {
	return fmt.Sprintf("  - id: %s\n    kind: mysql\n    dsn: %q\n    table: people\n    create_table: true\n", id, dsn)
}

// mutate changes the source table until stop is closed: updates, inserts
// and soft deletes, as a department's application would; with gone not
// nil, also rows deleted outright (their IDs are appended to gone), which
// only a reconciliation repairs.
func mutate(t *testing.T, db *sql.DB, stop <-chan struct{}, next *int, gone *[]int) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			id := 1 + r.IntN(*next-1)
			var q string
			switch r.IntN(4) {
			case 0:
				q = fmt.Sprintf(`UPDATE people SET name = '改名%d', amount = amount + 0.0001 WHERE id = %d`, id, id)
			case 1:
				q = fmt.Sprintf(`UPDATE people SET deleted = 1 WHERE id = %d`, id)
			case 2:
				*next++
				q = fmt.Sprintf(`INSERT INTO people (id, id_no, name, amount) VALUES (%d, '110101199003077777', '新人%d', 12.3400)`, *next, *next)
			case 3:
				q = fmt.Sprintf(`UPDATE people SET note = NULL, photo = X'0000FF' WHERE id BETWEEN %d AND %d`, id, id+50)
			}
			if gone != nil && r.IntN(25) == 0 {
				q = fmt.Sprintf(`DELETE FROM people WHERE id = %d`, id)
				*gone = append(*gone, id)
			}
			if _, err := db.Exec(q); err != nil {
				t.Errorf("mutate: %v", err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return &wg
}

// waitTablesEqual waits until the consumer's table equals the provider's
// live rows, leaving out at the consumer the rows with IDs in except.
func waitTablesEqual(t *testing.T, src, dst *sql.DB, timeout time.Duration, except ...int) {
	t.Helper()
	dstWhere := ""
	if len(except) > 0 {
		ids := make([]string, len(except))
		for i, id := range except {
			ids[i] = fmt.Sprint(id)
		}
		dstWhere = "WHERE id NOT IN (" + strings.Join(ids, ",") + ")"
	}
	var a, b string
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		a, b = tableDigest(t, src, "WHERE deleted = 0"), "missing"
		var exists int
		dst.QueryRow(`SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'people'`).Scan(&exists)
		if exists == 1 {
			b = tableDigest(t, dst, dstWhere)
		}
		if a == b {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("tables differ after %s: provider %s, consumer %s", timeout, a, b)
}

type tableSetup struct {
	h          *hub
	prov, cons *node
	src, dst   *sql.DB
	next       int
}

func newTableSetup(t *testing.T, rows int, maxBytes string, resourceExtra ...string) *tableSetup {
	srv := mariadbtest.Get(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	s := &tableSetup{src: srv.Open(t, a), dst: srv.Open(t, b), next: rows}
	if _, err := s.src.Exec(peopleDDL); err != nil {
		t.Fatal(err)
	}
	fillPeople(t, s.src, 1, rows)
	s.h = newHub(t, hubOpts{})
	s.h.start()
	s.prov = newNode(t, s.h, "dept-a", nodeOpts{resources: mysqlResource("dept-a.people", srv.DSN(a), strings.Join(resourceExtra, "")), maxBytes: maxBytes})
	s.cons = newNode(t, s.h, "dept-b", nodeOpts{subs: mysqlSub("dept-a.people", srv.DSN(b))})
	return s
}

// TestTableReplication copies a 200,000-row table through a real hub while
// the provider's application keeps changing it, and checks that both ends
// agree by the test's own query.
func TestTableReplication(t *testing.T) {
	s := newTableSetup(t, 200000, "1MiB")
	s.prov.start()
	s.cons.start()
	s.h.grant("dept-a.people", "dept-b")
	stop := make(chan struct{})
	var gone []int
	wg := mutate(t, s.src, stop, &s.next, &gone)
	waitFor(t, 60*time.Second, "the snapshot to start arriving", func() bool {
		var n int
		s.dst.QueryRow(`SELECT COUNT(*) FROM people`).Scan(&n)
		return n > 0
	})
	time.Sleep(3 * time.Second) // changes during the snapshot and after it
	close(stop)
	wg.Wait()
	if len(gone) == 0 {
		t.Fatal("no row was deleted outright during the copy")
	}
	// Everything but the rows deleted outright arrives by the watermark.
	waitTablesEqual(t, s.src, s.dst, 90*time.Second, gone...)
	if !logHas(s.prov.logPath(), "snapshot finished") {
		t.Fatal("the provider never logged the end of the snapshot")
	}
	if st := s.prov.status(); len(st.Tables) != 1 || st.Tables[0].Phase != "incremental" || !strings.HasPrefix(st.Tables[0].Position, "20") {
		t.Fatalf("status does not show the table's incremental position: %+v", st.Tables)
	}
	if out := mustRun(t, "qz-agent", "status", "--config", s.prov.cfg); !strings.Contains(out, "incremental, up to 20") {
		t.Fatalf("qz-agent status does not show the table line:\n%s", out)
	}
	// A batch of incremental changes after the snapshot, deletes included.
	if _, err := s.src.Exec(`UPDATE people SET deleted = 1 WHERE id % 1000 = 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.src.Exec(`UPDATE people SET amount = 99999999999999.9999, note = '最后一次' WHERE id % 777 = 1`); err != nil {
		t.Fatal(err)
	}
	waitTablesEqual(t, s.src, s.dst, 60*time.Second, gone...)

	// Hard deletes at the source and drift at the consumer: invisible to
	// the watermark, repaired by a reconciliation that resends only the
	// differing buckets.
	for _, q := range []string{`DELETE FROM people WHERE id % 9973 = 3`} {
		if _, err := s.src.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{`UPDATE people SET name = '被改了' WHERE id = 12345`, `DELETE FROM people WHERE id = 54321`} {
		if _, err := s.dst.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	if tableDigest(t, s.src, "WHERE deleted = 0") == tableDigest(t, s.dst, "") {
		t.Fatal("the tables should differ before the reconciliation")
	}
	out := mustRun(t, "qz-agent", "reconcile", "dept-a.people", "--config", s.prov.cfg)
	if !strings.Contains(out, "dept-b") {
		t.Fatalf("reconcile output does not name the consumer: %s", out)
	}
	waitTablesEqual(t, s.src, s.dst, 60*time.Second)
	resent := logSum(t, s.prov.logPath(), "reconcile: resending differing buckets", "rows")
	if resent == 0 || resent > 200000/3 {
		t.Fatalf("reconcile resent %d rows of 200,000 for %d differing rows", resent, len(gone)+22)
	}
	t.Logf("reconcile resent %d rows", resent)
}

// logSum adds up a numeric field of the JSON log lines with a message.
func logSum(t *testing.T, path, msg, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, line := range strings.Split(string(b), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != msg {
			continue
		}
		if v, ok := rec[field].(float64); ok {
			sum += int64(v)
		}
	}
	return sum
}

// TestTableKillNine kills the provider during extraction and the consumer
// during apply; the target still ends identical, without duplicates or
// gaps.
func TestTableKillNine(t *testing.T) {
	s := newTableSetup(t, 200000, "256KiB")
	s.prov.start()
	s.cons.start()
	s.h.grant("dept-a.people", "dept-b")
	applied := func() int {
		var n int
		s.dst.QueryRow(`SELECT IFNULL(MAX(seq), 0) FROM qz_applied`).Scan(&n)
		return n
	}
	waitFor(t, 60*time.Second, "a few batches applied", func() bool { return applied() >= 3 })
	s.prov.p.kill()
	s.prov.start()
	waitFor(t, 60*time.Second, "more batches applied", func() bool { return applied() >= 20 })
	s.cons.p.kill()
	s.cons.start()
	stop := make(chan struct{})
	wg := mutate(t, s.src, stop, &s.next, nil)
	waitFor(t, 60*time.Second, "more batches applied", func() bool { return applied() >= 30 })
	s.cons.p.kill()
	s.prov.p.kill()
	close(stop)
	wg.Wait()
	s.cons.start()
	s.prov.start()
	waitTablesEqual(t, s.src, s.dst, 120*time.Second)
	var dups int
	s.dst.QueryRow(`SELECT COUNT(*) - COUNT(DISTINCT id_no, id) FROM people`).Scan(&dups)
	if dups != 0 {
		t.Fatalf("%d duplicate rows at the consumer", dups)
	}
	// The database's record and the agent's agree on what was applied.
	st := s.cons.status()
	var seq int64
	s.dst.QueryRow(`SELECT seq FROM qz_applied`).Scan(&seq)
	for g, n := range st.Applied {
		if n != seq {
			t.Fatalf("agent applied %d of grant %s, the database records %d", n, g, seq)
		}
	}
}

// TestTableSchemaChange adds a column at the source: the consumer's line
// stops with an error naming the resource and the column, and resumes with
// nothing lost once the consumer's table has the column.
func TestTableSchemaChange(t *testing.T) {
	srv := mariadbtest.Get(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	src, dst := srv.Open(t, a), srv.Open(t, b)
	for _, q := range []string{peopleDDL} {
		if _, err := src.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	fillPeople(t, src, 1, 1000)
	h := newHub(t, hubOpts{})
	h.start()
	res := strings.Replace(mysqlResource("dept-a.people", srv.DSN(a), ""), "    columns: [id, id_no, name, address, amount, born, photo, note, updated_at]\n", "", 1)
	prov := newNode(t, h, "dept-a", nodeOpts{resources: res})
	cons := newNode(t, h, "dept-b", nodeOpts{subs: mysqlSub("dept-a.people", srv.DSN(b))})
	prov.start()
	cons.start()
	h.grant("dept-a.people", "dept-b")
	count := func(db *sql.DB, where string) int {
		var n int
		db.QueryRow(`SELECT COUNT(*) FROM people ` + where).Scan(&n)
		return n
	}
	waitFor(t, 60*time.Second, "the snapshot to arrive", func() bool { return count(dst, "") == 1000 })
	if _, err := src.Exec(`ALTER TABLE people ADD COLUMN 户籍 VARCHAR(20) NULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(`UPDATE people SET 户籍 = '海淀', name = '新名字' WHERE id <= 10`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the consumer to stop the line", func() bool {
		return logHas(cons.logPath(), "dept-a.people") && logHas(cons.logPath(), "column 户籍")
	})
	st := cons.status()
	if len(st.Stopped) == 0 || !strings.Contains(fmt.Sprint(st.Stopped), "ADD `户籍` VARCHAR(20), which") {
		t.Fatalf("status shows no stopped line naming the column: %+v", st.Stopped)
	}
	if n := count(dst, "WHERE name = '新名字'"); n != 0 {
		t.Fatalf("%d rows were applied without the new column", n)
	}
	if _, err := dst.Exec(`ALTER TABLE people ADD COLUMN 户籍 VARCHAR(20) NULL`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the line to resume", func() bool { return count(dst, "WHERE 户籍 = '海淀' AND name = '新名字'") == 10 })
	if _, err := src.Exec(`UPDATE people SET deleted = 1 WHERE id > 990`); err != nil {
		t.Fatal(err)
	}
	waitTablesEqual(t, src, dst, 30*time.Second)
	_ = context.Background
}

// TestTableBadInput checks that the usual mistakes with a table resource
// give one clear line naming the resource and the fix, before anything
// runs.
func TestTableBadInput(t *testing.T) {
	srv := mariadbtest.Get(t)
	a := srv.NewDatabase(t)
	db := srv.Open(t, a)
	for _, q := range []string{
		peopleDDL,
		`CREATE TABLE nokey (id INT, updated_at DATETIME(6))`,
		`CREATE TABLE noindex (id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	cfg := func(name, dsn, table, extra string) string {
		p := filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf("state_dir: %s\nresources:\n  - id: dept-a.%s\n    kind: mysql\n    dsn: %q\n    table: %s\n    watermark: updated_at\n%s", dir, name, dsn, table, extra)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wrong := srv.Config(a)
	wrong.Passwd += "x"
	check := func(p string) []string { return []string{"config", "check", "--config", p} }
	t.Run("wrong credentials", func(t *testing.T) {
		expectFail(t, "qz-agent", check(cfg("creds", wrong.FormatDSN(), "people", "")), "resource dept-a.creds", "Access denied", "check dsn")
	})
	t.Run("missing table", func(t *testing.T) {
		expectFail(t, "qz-agent", check(cfg("missing", srv.DSN(a), "peeple", "")), "resource dept-a.missing", "table peeple does not exist")
	})
	t.Run("table without a key", func(t *testing.T) {
		expectFail(t, "qz-agent", check(cfg("nokey", srv.DSN(a), "nokey", "")), "resource dept-a.nokey", "no primary key", "key: [...]")
	})
	t.Run("unknown column", func(t *testing.T) {
		expectFail(t, "qz-agent", check(cfg("cols", srv.DSN(a), "people", "    columns: [id, nmae]\n")), "column nmae is not in people", "it has: id, id_no, name")
	})
	t.Run("incremental without watermark", func(t *testing.T) {
		p := filepath.Join(dir, "nowm.yaml")
		os.WriteFile(p, []byte(fmt.Sprintf("state_dir: %s\nresources:\n  - id: dept-a.nowm\n    kind: mysql\n    dsn: %q\n    table: people\n", dir, srv.DSN(a))), 0o644)
		expectFail(t, "qz-agent", check(p), "nowm.yaml:3", "needs watermark")
	})
	t.Run("watermark without an index warns with the plan", func(t *testing.T) {
		out, errOut, err := run("qz-agent", check(cfg("noindex", srv.DSN(a), "noindex", ""))...)
		if err != nil {
			t.Fatalf("a missing index is a warning, not an error: %v\n%s", err, errOut)
		}
		for _, w := range []string{"dept-a.noindex", "no index starts with watermark column updated_at", "CREATE INDEX", "type=ALL"} {
			if !strings.Contains(errOut, w) {
				t.Errorf("warning does not mention %q:\n%s", w, errOut)
			}
		}
		if !strings.Contains(out, "OK") {
			t.Errorf("want OK, got %q", out)
		}
		_, errOut, _ = run("qz-agent", check(cfg("indexed", srv.DSN(a), "people", ""))...)
		if strings.Contains(errOut, "no index") {
			t.Errorf("an indexed watermark must not warn:\n%s", errOut)
		}
	})
}

// TestTableAppearsLater starts the provider before its table exists: the
// agent keeps running, shows the resource as stopped, and starts sending
// once the table is there.
func TestTableAppearsLater(t *testing.T) {
	srv := mariadbtest.Get(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	src, dst := srv.Open(t, a), srv.Open(t, b)
	h := newHub(t, hubOpts{})
	h.start()
	prov := newNode(t, h, "dept-a", nodeOpts{resources: mysqlResource("dept-a.people", srv.DSN(a), "")})
	cons := newNode(t, h, "dept-b", nodeOpts{subs: mysqlSub("dept-a.people", srv.DSN(b))})
	prov.start()
	cons.start()
	waitFor(t, 15*time.Second, "the resource to show as stopped", func() bool {
		st := prov.status()
		return len(st.Stopped) == 1 && st.Stopped[0].Side == "resource" && strings.Contains(st.Stopped[0].Reason, "table people does not exist")
	})
	if _, err := src.Exec(peopleDDL); err != nil {
		t.Fatal(err)
	}
	fillPeople(t, src, 1, 500)
	h.grant("dept-a.people", "dept-b")
	waitTablesEqual(t, src, dst, 30*time.Second)
	if st := prov.status(); len(st.Stopped) != 0 {
		t.Fatalf("still shown as stopped: %+v", st.Stopped)
	}
}
