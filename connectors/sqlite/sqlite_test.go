package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// open opens a database file the way the connector does.
func open(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := Dialect{}.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// impatient opens a database file as a writer that gives up at once when
// it meets a lock, as an application without a busy timeout would.
func impatient(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(0)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func exec(t *testing.T, db *sql.DB, qs ...string) {
	t.Helper()
	for _, q := range qs {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// pair is a source and a sink between two database files, moved by hand
// the way the agent moves them.
type pair struct {
	src      connectors.Source
	sink     connectors.Sink
	st       *connectorstest.MemState
	seq      uint64
	rows     int64 // rows sent so far
	fromPath string
	toPath   string
	from, to *sql.DB
	srcConf  *sqltable.SourceConfig
	sinkConf *sqltable.SinkConfig
}

func newPair(t *testing.T, srcEdit func(*sqltable.SourceConfig), sinkEdit func(*sqltable.SinkConfig)) *pair {
	t.Helper()
	dir := t.TempDir()
	p := &pair{st: connectorstest.NewMemState("src/g1"), fromPath: filepath.Join(dir, "dept-a.db"), toPath: filepath.Join(dir, "dept-b.db")}
	p.from, p.to = open(t, p.fromPath), open(t, p.toPath)
	t.Cleanup(func() {
		if p.src != nil {
			p.src.Close()
		}
		if p.sink != nil {
			p.sink.Close()
		}
	})
	k, err := connectors.Lookup(Kind)
	if err != nil {
		t.Fatal(err)
	}
	sc := k.SourceConf().(*sqltable.SourceConfig)
	sc.ID, sc.DSN, sc.Table, sc.Watermark, sc.Lag, sc.PageRows = "dept-a.people", p.fromPath, "people", "updated_at", 0, 1000
	if srcEdit != nil {
		srcEdit(sc)
	}
	kc := k.SinkConf().(*sqltable.SinkConfig)
	kc.ID, kc.DSN, kc.Table, kc.CreateTable = "dept-a.people", p.toPath, sc.Table, true
	if sinkEdit != nil {
		sinkEdit(kc)
	}
	p.srcConf, p.sinkConf = sc, kc
	return p
}

func (p *pair) open(t *testing.T) {
	t.Helper()
	if err := p.srcConf.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := p.sinkConf.Validate(); err != nil {
		t.Fatal(err)
	}
	src, err := p.srcConf.OpenSource(quiet)
	if err != nil {
		t.Fatal(err)
	}
	p.src = src
	sink, err := p.sinkConf.OpenSink(quiet)
	if err != nil {
		t.Fatal(err)
	}
	p.sink = sink
}

// step moves one batch; it reports false when the source is idle.
func (p *pair) step(t *testing.T, limit int64) bool {
	t.Helper()
	out := connectors.Output{Limit: limit}
	err := p.src.Next(context.Background(), p.st, &out)
	if errors.Is(err, connectors.ErrIdle) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if !out.Empty() {
		p.seq++
		p.rows += out.Rows
		h := batch.Header{Kind: out.Kind, Resource: "dept-a.people", Grant: "g1", Sequence: p.seq, Schema: out.Schema, Rows: out.Rows}
		if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	p.st.Commit(&out.Changes)
	return true
}

// drain moves batches until the source is idle; it returns how many steps.
func (p *pair) drain(t *testing.T, limit int64) int {
	t.Helper()
	n := 0
	for p.step(t, limit) {
		n++
	}
	return n
}

// dump is a table's rows in key order, each value as SQLite's quote()
// shows it: storage class included, so 12.5 differs from '12.5', NULL from
// the empty string and a blob from text.
func dump(t *testing.T, db *sql.DB, table string) []string {
	t.Helper()
	rows, err := db.Query("SELECT name FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		t.Fatal(err)
	}
	var cols []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		cols = append(cols, fmt.Sprintf("'%s=' || quote(%s)", n, Dialect{}.Quote(n)))
	}
	rows.Close()
	var out []string
	rows, err = db.Query("SELECT " + strings.Join(cols, " || ' | ' || ") + " FROM " + Dialect{}.Quote(table) + " ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTables reports how two tables differ, or "".
func sameTables(t *testing.T, a, b *sql.DB, table string) string {
	t.Helper()
	da, db := dump(t, a, table), dump(t, b, table)
	if len(da) != len(db) {
		return fmt.Sprintf("%s: %d rows at the source, %d at the target", table, len(da), len(db))
	}
	for i := range da {
		if da[i] != db[i] {
			return fmt.Sprintf("%s row %d differs:\nsource %s\ntarget %s", table, i, da[i], db[i])
		}
	}
	return ""
}

func equalTables(t *testing.T, a, b *sql.DB, table string) {
	t.Helper()
	if d := sameTables(t, a, b, table); d != "" {
		t.Fatal(d)
	}
}

// eventually polls cond until it holds, failing with what it last said.
func eventually(t *testing.T, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const people = `CREATE TABLE people (
  id INTEGER PRIMARY KEY,
  name VARCHAR(50) NOT NULL,
  amount DECIMAL_TEXT(36,4),
  ratio REAL,
  note TEXT,
  photo BLOB,
  born DATE,
  updated_at DATETIME(6) NOT NULL
)`

// fill writes n rows meant to trip any conversion: Chinese text, decimals
// of 30 integer digits with trailing zeros, NULL beside the empty string, blobs with
// 0x00, six fraction digits.
func fill(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		var note any = fmt.Sprintf("备注 %d — ünïcode 🚀", i)
		switch i % 7 {
		case 0:
			note = nil
		case 1:
			note = ""
		}
		amount := fmt.Sprintf("%030d.%02d00", 123456789012345678+i, i%100)
		if i%5 == 0 {
			amount = "-0.0100"
		}
		_, err := tx.Exec(`INSERT INTO people VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			i, fmt.Sprintf("张三%d", i), amount, float64(i)/10, note, []byte{0, byte(i), 0, 0xff, 0},
			"1990-01-02", fmt.Sprintf("2025-06-01 10:%02d:%02d.%06d", i/60%60, i%60, i*37%1000000))
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotThenIncremental(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.PageRows = 7 }, nil)
	exec(t, p.from, people, `CREATE INDEX people_updated ON people (updated_at, id)`)
	fill(t, p.from, 2000)
	p.open(t)
	if n := p.drain(t, 64<<10); n < 2 {
		t.Fatalf("want several batches for 2000 rows at 64 KiB, got %d", n)
	}
	if p.rows != 2000 {
		t.Fatalf("the snapshot sent %d rows, want 2000", p.rows)
	}
	equalTables(t, p.from, p.to, "people")
	var decl string
	p.to.QueryRow(`SELECT type FROM pragma_table_info('people') WHERE name = 'amount'`).Scan(&decl)
	if decl != "DECIMAL_TEXT(36,4)" {
		t.Errorf("target amount is %s, want DECIMAL_TEXT(36,4)", decl)
	}

	// Ten rows share one watermark value, more than a page holds.
	now := `strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'`
	exec(t, p.from,
		`UPDATE people SET name = '李四', amount = '-0.0001', note = NULL, photo = X'', updated_at = `+now+` WHERE id < 10`,
		`UPDATE people SET note = '', updated_at = `+now+` WHERE id = 700`,
		`INSERT INTO people (id, name, amount, updated_at) VALUES (99999, '王五', '100000000000000000000000000000.0000', `+now+`)`)
	p.rows = 0
	// The bound moves in whole seconds: the changes arrive once the
	// current second is over.
	eventually(t, func() string {
		p.drain(t, 64<<10)
		return sameTables(t, p.from, p.to, "people")
	})
	if p.rows != 12 {
		t.Errorf("incremental reads sent %d rows, want the 12 changed", p.rows)
	}
}

// TestCurrentTimestampBound checks the watermark bound against what
// SQLite's own CURRENT_TIMESTAMP writes: no fraction digits.
func TestCurrentTimestampBound(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "a.db"))
	exec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, ts DATETIME)`,
		// What CURRENT_TIMESTAMP wrote one second ago, and now.
		`INSERT INTO t VALUES (1, datetime('now', '-1 seconds')), (2, CURRENT_TIMESTAMP)`,
		// The same instants with milli- and microseconds.
		`INSERT INTO t VALUES (3, strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 seconds')), (4, strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 seconds') || '999')`)
	col := batch.Column{Name: "ts", Type: batch.TypeDatetime}
	below := func(lag time.Duration) map[int]bool {
		bound, err := Dialect{}.Now(context.Background(), db, col, lag, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(bound) != len("2006-01-02 15:04:05") {
			t.Fatalf("bound %q is not in whole seconds", bound)
		}
		got := map[int]bool{}
		rows, err := db.Query(`SELECT id, ts < ? FROM t`, bound)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id int
			var b bool
			rows.Scan(&id, &b)
			got[id] = b
		}
		return got
	}
	if got := below(0); !got[1] || !got[3] || !got[4] || got[2] {
		t.Errorf("lag 0: rows below the bound %v; want those written a second ago (1, 3, 4), not the one of this second (2)", got)
	}
	if got := below(5 * time.Second); got[1] || got[2] || got[3] || got[4] {
		t.Errorf("lag 5s: rows below the bound %v; want none", got)
	}
}

func TestNow(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "a.db"))
	now := func(typ string, lag time.Duration, zone string) time.Time {
		t.Helper()
		v, err := Dialect{}.Now(context.Background(), db, batch.Column{Name: "w", Type: typ}, lag, zone)
		if err != nil {
			t.Fatal(err)
		}
		layout := "2006-01-02 15:04:05"
		if typ == batch.TypeDate {
			layout = "2006-01-02"
		}
		at, err := time.Parse(layout, v)
		if err != nil {
			t.Fatalf("%s bound %q: %v", typ, v, err)
		}
		return at
	}
	near := func(what string, got, want time.Time) {
		t.Helper()
		if d := got.Sub(want); d < -2*time.Second || d > 2*time.Second {
			t.Errorf("%s: %s, want about %s", what, got, want)
		}
	}
	utc := time.Now().UTC()
	near("datetime", now(batch.TypeDatetime, 0, ""), utc)
	near("lag 90s", now(batch.TypeDatetime, 90*time.Second, ""), utc.Add(-90*time.Second))
	near("+08:00", now(batch.TypeDatetime, 0, "+08:00"), utc.Add(8*time.Hour))
	near("-0530", now(batch.TypeDatetime, 0, "-0530"), utc.Add(-5*time.Hour-30*time.Minute))
	near("timestamp ignores time_zone", now(batch.TypeTimestamp, 0, "+08:00"), utc)
	if got, want := now(batch.TypeDate, 0, ""), utc.Truncate(24*time.Hour); !got.Equal(want) && !got.Equal(want.Add(-24*time.Hour)) {
		t.Errorf("date: %s, want %s", got, want)
	}
	if _, err := (Dialect{}).Now(context.Background(), db, batch.Column{Name: "w", Type: batch.TypeDatetime}, 0, "Mars/Olympus"); err == nil || !strings.Contains(err.Error(), "Mars/Olympus") {
		t.Errorf("an unknown zone: %v", err)
	}
}

// TestSnapshotBesideWriter checks that a snapshot in progress neither
// blocks the application's writers nor sees what they commit.
func TestSnapshotBesideWriter(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) {
		c.Strategy, c.Watermark, c.PageRows = sqltable.StrategySnapshot, "", 100
	}, nil)
	exec(t, p.from, people)
	fill(t, p.from, 2000)
	p.open(t)
	if !p.step(t, 4<<10) || p.rows >= 2000 {
		t.Fatalf("want the first batch to leave the snapshot open, it sent %d rows", p.rows)
	}
	app := impatient(t, p.fromPath)
	exec(t, app,
		`INSERT INTO people (id, name, updated_at) VALUES (100000, 'new', '2026-01-01 00:00:00')`,
		`UPDATE people SET name = 'changed' WHERE id = 1999`,
		`DELETE FROM people WHERE id = 1998`)
	p.drain(t, 4<<10)
	got := dump(t, p.to, "people")
	if len(got) != 2000 {
		t.Fatalf("target has %d rows, want the 2000 of the snapshot", len(got))
	}
	var name string
	p.to.QueryRow(`SELECT name FROM people WHERE id = 1999`).Scan(&name)
	if name != "张三1999" {
		t.Errorf("row 1999 is %q at the target: the snapshot saw a later write", name)
	}
}

// TestApplyTakesWriteLock checks that a batch's transaction is a writer
// from its start, so it cannot fail when another writer commits between
// its read of the applied table and its first write.
func TestApplyTakesWriteLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	db := open(t, path)
	exec(t, db, `CREATE TABLE x (a INTEGER)`)
	tx, err := Dialect{}.BeginApply(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	other := impatient(t, path)
	if _, err := other.Exec(`INSERT INTO x VALUES (1)`); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("another writer during BeginApply's transaction: %v, want database is locked", err)
	}
	if _, err := tx.Exec(`INSERT INTO x VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	exec(t, other, `INSERT INTO x VALUES (3)`)
}

// TestApplyBesideWriter applies many batches while another program keeps
// writing to the target database.
func TestApplyBesideWriter(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.PageRows = 20 }, nil)
	exec(t, p.from, people)
	fill(t, p.from, 1000)
	exec(t, p.to, `CREATE TABLE audit (n INTEGER)`)
	p.open(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tx, err := p.to.Begin()
			if err == nil {
				tx.QueryRow(`SELECT count(*) FROM audit`).Scan(new(int))
				_, err = tx.Exec(`INSERT INTO audit VALUES (?)`, i)
			}
			if err == nil {
				err = tx.Commit()
			}
			if err != nil {
				writeErr = err
				return
			}
			// An application pauses between transactions; SQLite's
			// busy wait is not fair to a writer that never does.
			time.Sleep(time.Millisecond)
		}
	}()
	p.drain(t, 2<<10)
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	equalTables(t, p.from, p.to, "people")
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ dsn, want string }{
		{"app.db", "not an absolute file path"},
		{filepath.Join(dir, "missing", "app.db"), "does not exist"},
		{dir, "is a directory"},
	} {
		db, err := Dialect{}.Open(context.Background(), c.dsn)
		if err == nil {
			db.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("open %s: %v, want %q", c.dsn, err, c.want)
		}
	}
}

func TestSourceErrors(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, `CREATE TABLE nokey (a INTEGER, updated_at DATETIME)`)
	for _, c := range []struct {
		edit func(*sqltable.SourceConfig)
		want string
	}{
		{func(c *sqltable.SourceConfig) { c.Table = "missing" }, "table missing does not exist"},
		{func(c *sqltable.SourceConfig) { c.Table = "nokey" }, "table nokey has no primary key"},
		{func(c *sqltable.SourceConfig) { c.DSN = "relative.db" }, "not an absolute file path"},
	} {
		sc := *p.srcConf
		c.edit(&sc)
		src, err := sc.OpenSource(quiet)
		if err == nil {
			src.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "dept-a.people") && !strings.Contains(err.Error(), "dsn") {
			t.Errorf("want %q naming the resource or the dsn, got %v", c.want, err)
		}
	}
}

func TestTypeMapping(t *testing.T) {
	for _, c := range []struct {
		decl string
		want batch.Column
	}{
		{"INTEGER", batch.Column{Type: batch.TypeInt}},
		{"bigint", batch.Column{Type: batch.TypeInt}},
		{"UNSIGNED BIG INT", batch.Column{Type: batch.TypeInt}},
		{"boolean", batch.Column{Type: batch.TypeInt}},
		{"DECIMAL(18,4)", batch.Column{Type: batch.TypeDecimal, Precision: 18, Scale: 4}},
		{"numeric( 10 , 2 )", batch.Column{Type: batch.TypeDecimal, Precision: 10, Scale: 2}},
		{"NUMERIC", batch.Column{Type: batch.TypeDecimal}},
		{"DECIMAL_TEXT(36,4)", batch.Column{Type: batch.TypeDecimal, Precision: 36, Scale: 4}},
		{"REAL", batch.Column{Type: batch.TypeDouble}},
		{"double precision", batch.Column{Type: batch.TypeDouble}},
		{"FLOAT", batch.Column{Type: batch.TypeDouble}},
		{"FLOAT4", batch.Column{Type: batch.TypeFloat}},
		{"VARCHAR(50)", batch.Column{Type: batch.TypeString, Length: 50}},
		{"nvarchar(10)", batch.Column{Type: batch.TypeString, Length: 10}},
		{"CHARACTER(20)", batch.Column{Type: batch.TypeString, Length: 20}},
		{"character varying(8)", batch.Column{Type: batch.TypeString, Length: 8}},
		{"VARCHAR", batch.Column{Type: batch.TypeText}},
		{"TEXT", batch.Column{Type: batch.TypeText}},
		{"CLOB", batch.Column{Type: batch.TypeText}},
		{"mediumtext", batch.Column{Type: batch.TypeText}},
		{"", batch.Column{Type: batch.TypeText}},
		{"JSON", batch.Column{Type: batch.TypeText}},
		{"BLOB", batch.Column{Type: batch.TypeBlob}},
		{"VARBINARY(16)", batch.Column{Type: batch.TypeBinary, Length: 16}},
		{"BINARY(4)", batch.Column{Type: batch.TypeBinary, Length: 4}},
		{"VARBINARY", batch.Column{Type: batch.TypeBlob}},
		{"DATE", batch.Column{Type: batch.TypeDate}},
		{"TIME", batch.Column{Type: batch.TypeTime}},
		{"time(3)", batch.Column{Type: batch.TypeTime, Precision: 3}},
		{"DATETIME", batch.Column{Type: batch.TypeDatetime}},
		{"DATETIME(6)", batch.Column{Type: batch.TypeDatetime, Precision: 6}},
		{"TIMESTAMP", batch.Column{Type: batch.TypeTimestamp}},
		{"TIMESTAMP(3)", batch.Column{Type: batch.TypeTimestamp, Precision: 3}},
		{"TIMESTAMPTZ(6)", batch.Column{Type: batch.TypeTimestampTZ, Precision: 6}},
		{"timestamp with time zone", batch.Column{Type: batch.TypeTimestampTZ}},
	} {
		t.Run(c.decl, func(t *testing.T) {
			c.want.Name, c.want.Nullable = "c", true
			if got := logical("c", c.decl); got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestCreateTableDescribe checks that every batch type survives
// CreateTable and Describe, and that canonical text survives the affinity
// of the declared type.
func TestCreateTableDescribe(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "a.db"))
	cols := []struct {
		c     batch.Column
		value any
	}{
		{batch.Column{Name: "i", Type: batch.TypeInt}, "-9223372036854775808"},
		{batch.Column{Name: "d", Type: batch.TypeDecimal, Precision: 40, Scale: 10}, "123456789012345678901234567890.1234500000"},
		{batch.Column{Name: "d0", Type: batch.TypeDecimal, Nullable: true}, "12.50"},
		{batch.Column{Name: "f", Type: batch.TypeFloat, Nullable: true}, "1.1"},
		{batch.Column{Name: "g", Type: batch.TypeDouble, Nullable: true}, "0.30000000000000004"},
		{batch.Column{Name: "s", Type: batch.TypeString, Length: 20, Nullable: true}, "0012"},
		{batch.Column{Name: "x", Type: batch.TypeText, Nullable: true}, "1e5"},
		{batch.Column{Name: "b", Type: batch.TypeBinary, Length: 4, Nullable: true}, []byte{0, 1, 0, 2}},
		{batch.Column{Name: "bl", Type: batch.TypeBlob, Nullable: true}, []byte{}},
		{batch.Column{Name: "dt", Type: batch.TypeDate, Nullable: true}, "2026-01-02"},
		{batch.Column{Name: "tm", Type: batch.TypeTime, Precision: 6, Nullable: true}, "-838:59:59.000000"},
		{batch.Column{Name: "dtm", Type: batch.TypeDatetime, Precision: 6, Nullable: true}, "2026-01-02 03:04:05.000600"},
		{batch.Column{Name: "dtm0", Type: batch.TypeDatetime, Nullable: true}, "2026-01-02 03:04:05"},
		{batch.Column{Name: "ts", Type: batch.TypeTimestamp, Precision: 3, Nullable: true}, "2026-01-02 03:04:05.100"},
		{batch.Column{Name: "tz", Type: batch.TypeTimestampTZ, Precision: 0, Nullable: true}, "2026-01-02 03:04:05 +08:00"},
	}
	s := &batch.Schema{Key: []string{"i", "d"}}
	var args []any
	for _, c := range cols {
		s.Columns = append(s.Columns, c.c)
		args = append(args, c.value)
	}
	ddl, err := Dialect{}.CreateTable("all types", s)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, db, ddl)
	tab, err := Dialect{}.Describe(context.Background(), db, "all types")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tab.Columns, s.Columns) {
		t.Errorf("described\n%+v\nwant\n%+v\nfrom %s", tab.Columns, s.Columns, ddl)
	}
	if !reflect.DeepEqual(tab.Key, s.Key) {
		t.Errorf("key %v, want %v", tab.Key, s.Key)
	}
	if _, err := db.Exec(Dialect{}.Upsert("all types", s.Columns, s.Key, 1), args...); err != nil {
		t.Fatal(err)
	}
	var sel []string
	for _, c := range s.Columns {
		sel = append(sel, Dialect{}.Select(c, Dialect{}.Quote(c.Name)))
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := db.QueryRow("SELECT " + strings.Join(sel, ", ") + ` FROM "all types"`).Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	for i, c := range cols {
		got, err := sqltable.ToText(&s.Columns[i], vals[i])
		if err != nil {
			t.Errorf("%s: %v", c.c.Name, err)
			continue
		}
		want, _ := c.value.([]byte)
		if str, ok := c.value.(string); ok {
			want = []byte(str)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s (%s): read back %q, want %q", c.c.Name, c.c.Type, got, want)
		}
	}
}

// TestDecimalAffinity reads DECIMAL columns whose NUMERIC affinity made
// SQLite store the application's values as INTEGER and REAL.
func TestDecimalAffinity(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) {
		c.Table, c.Strategy, c.Watermark = "prices", sqltable.StrategySnapshot, ""
	}, nil)
	exec(t, p.from, `CREATE TABLE prices (id INTEGER PRIMARY KEY, price DECIMAL(10,2), loose NUMERIC)`,
		`INSERT INTO prices VALUES (1, 12.5, 1e20), (2, 7, 0.30000000000000004), (3, '12.50', 123456.789), (4, NULL, -0.00001), (5, 'n/a', 'n/a')`)
	p.open(t)
	p.drain(t, 1<<20)
	want := []string{
		`id=1 | price='12.50' | loose='100000000000000000000'`,
		`id=2 | price='7.00' | loose='0.30000000000000004'`,
		`id=3 | price='12.50' | loose='123456.789'`,
		`id=4 | price=NULL | loose='-0.00001'`,
		`id=5 | price='n/a' | loose='n/a'`,
	}
	if got := dump(t, p.to, "prices"); !reflect.DeepEqual(got, want) {
		t.Errorf("target rows\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestTimesAsStored checks that date and time values travel as the
// application wrote them, even in columns the driver would parse.
func TestTimesAsStored(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) {
		c.Table, c.Strategy, c.Watermark = "events", sqltable.StrategySnapshot, ""
	}, nil)
	exec(t, p.from, `CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, day DATE, stamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP)`,
		`INSERT INTO events (id, at, day) VALUES (1, strftime('%Y-%m-%d %H:%M:%f', 'now'), '2026-01-02')`,
		`INSERT INTO events VALUES (2, '2026-01-02 03:04:05.123456', '2026-01-02 00:00:00', '2026-01-02 03:04:05.5')`)
	p.open(t)
	p.drain(t, 1<<20)
	equalTables(t, p.from, p.to, "events")
}

func TestDescribe(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "a.db"))
	exec(t, db,
		`CREATE TABLE t (a TEXT NOT NULL, b INTEGER, c TEXT, d TEXT, e TEXT, PRIMARY KEY (b, a))`,
		`CREATE UNIQUE INDEX t_c ON t (c)`,
		`CREATE UNIQUE INDEX t_d ON t (d) WHERE d IS NOT NULL`,
		`CREATE UNIQUE INDEX t_e ON t (lower(e))`,
		`CREATE INDEX t_ed ON t (e, d)`,
		`CREATE TABLE w (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID`,
		`CREATE TABLE r (x INTEGER, y TEXT)`)
	d := Dialect{}
	tab, err := d.Describe(context.Background(), db, "t")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tab.Key, []string{"b", "a"}) {
		t.Errorf("key %v, want [b a] (primary key order, not column order)", tab.Key)
	}
	if want := [][]string{{"b", "a"}, {"c"}}; !reflect.DeepEqual(tab.Unique, want) {
		t.Errorf("unique %v, want %v (a partial or expression index identifies nothing)", tab.Unique, want)
	}
	if want := map[string]bool{"b": true, "c": true, "e": true}; !reflect.DeepEqual(tab.Leading, want) {
		t.Errorf("leading %v, want %v", tab.Leading, want)
	}
	if tab.Columns[0].Nullable || tab.Columns[1].Nullable || !tab.Columns[2].Nullable {
		t.Errorf("nullability %+v: key columns are NOT NULL, others as declared", tab.Columns)
	}
	if tab, err = d.Describe(context.Background(), db, "main.w"); err != nil || !reflect.DeepEqual(tab.Key, []string{"k"}) || len(tab.Unique) != 1 {
		t.Errorf("WITHOUT ROWID table: %+v, %v", tab, err)
	}
	if tab, err = d.Describe(context.Background(), db, "r"); err != nil || tab.Key != nil || len(tab.Unique) != 0 {
		t.Errorf("rowid table without primary key: %+v, %v; want no key", tab, err)
	}
	if _, err = d.Describe(context.Background(), db, "nope"); !errors.Is(err, sqltable.ErrNoTable) {
		t.Errorf("missing table: %v, want ErrNoTable", err)
	}
}

func TestQuery(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "a.db"))
	exec(t, db, people, `CREATE INDEX people_updated ON people (updated_at, id)`)
	d := Dialect{}
	cols, native, err := d.DescribeQuery(context.Background(), db, `SELECT id, amount, updated_at, upper(name) AS shout FROM people WHERE id % 2 = 0`)
	if err != nil {
		t.Fatal(err)
	}
	want := []batch.Column{
		{Name: "id", Type: batch.TypeInt, Nullable: true},
		{Name: "amount", Type: batch.TypeDecimal, Precision: 36, Scale: 4, Nullable: true},
		{Name: "updated_at", Type: batch.TypeDatetime, Precision: 6, Nullable: true},
		{Name: "shout", Type: batch.TypeText, Nullable: true},
	}
	if !reflect.DeepEqual(cols, want) {
		t.Errorf("query columns\n%+v\nwant\n%+v (native %v)", cols, want, native)
	}
	plan, err := d.Explain(context.Background(), db, `SELECT id FROM people WHERE updated_at >= ? ORDER BY updated_at, id LIMIT 10`, []any{"2026-01-01 00:00:00"})
	if err != nil || !strings.Contains(plan, "people_updated") {
		t.Errorf("plan %q, %v: want it to name the index", plan, err)
	}
}

// TestAllKeyTable applies rows of a table that is all key, twice.
func TestAllKeyTable(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) {
		c.Table, c.Strategy, c.Watermark = "tags", sqltable.StrategySnapshot, ""
	}, nil)
	exec(t, p.from, `CREATE TABLE tags (tag TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (id, tag))`,
		`INSERT INTO tags VALUES ('红', 1), ('blue', 1), ('红', 2)`)
	p.open(t)
	p.drain(t, 1<<20)
	equalTables(t, p.from, p.to, "tags")
	got := Dialect{}.Upsert("tags", []batch.Column{{Name: "tag"}, {Name: "id"}}, []string{"id", "tag"}, 2)
	if want := `INSERT INTO "tags" ("tag", "id") VALUES (?, ?), (?, ?) ON CONFLICT ("id", "tag") DO NOTHING`; got != want {
		t.Errorf("upsert\n%s\nwant\n%s", got, want)
	}
}
