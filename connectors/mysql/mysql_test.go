package mysql_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
	"github.com/qianzhi/qianzhi/connectors/mysql"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/internal/mariadbtest"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

func TestMain(m *testing.M) { mariadbtest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func exec(t *testing.T, db *sql.DB, qs ...string) {
	t.Helper()
	for _, q := range qs {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// pair is a source and a sink between two databases of one server, moved
// by hand the way the agent moves them.
type pair struct {
	src      connectors.Source
	sink     connectors.Sink
	st       *connectorstest.MemState
	seq      uint64
	from, to *sql.DB
	srcConf  *sqltable.SourceConfig
	log      io.Writer // the source's log, when set before open
	sinkConf *sqltable.SinkConfig
}

func newPair(t *testing.T, srcEdit func(*sqltable.SourceConfig), sinkEdit func(*sqltable.SinkConfig)) *pair {
	t.Helper()
	srv := mariadbtest.Get(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	p := &pair{st: connectorstest.NewMemState("src/g1"), from: srv.Open(t, a), to: srv.Open(t, b)}
	t.Cleanup(func() {
		if p.src != nil {
			p.src.Close()
		}
		if p.sink != nil {
			p.sink.Close()
		}
	})
	k, _ := connectors.Lookup(mysql.Kind)
	sc := k.SourceConf().(*sqltable.SourceConfig)
	sc.ID, sc.DSN, sc.Table, sc.Watermark, sc.Lag, sc.PageRows = "dept-a.people", srv.DSN(a), "people", "updated_at", 0, 1000
	if srcEdit != nil {
		srcEdit(sc)
	}
	kc := k.SinkConf().(*sqltable.SinkConfig)
	kc.ID, kc.DSN, kc.Table, kc.CreateTable = "dept-a.people", srv.DSN(b), "people", true
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
	log := quiet
	if p.log != nil {
		log = slog.New(slog.NewTextHandler(p.log, nil))
	}
	src, err := p.srcConf.OpenSource(log)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := p.sinkConf.OpenSink(quiet)
	if err != nil {
		t.Fatal(err)
	}
	p.src, p.sink = src, sink
}

// drain moves batches until the source is idle; it returns how many.
func (p *pair) drain(t *testing.T, limit int64) int {
	n, _ := p.drainRows(t, limit)
	return n
}

// drainRows is drain that also counts the rows moved and, like the agent,
// hands a digest's differing buckets back to the source.
func (p *pair) drainRows(t *testing.T, limit int64) (batches int, rows int64) {
	t.Helper()
	n := 0
	for {
		out := connectors.Output{Limit: limit}
		err := p.src.Next(context.Background(), p.st, &out)
		if errors.Is(err, connectors.ErrIdle) {
			return n, rows
		}
		if err != nil {
			t.Fatal(err)
		}
		if !out.Empty() {
			p.seq++
			h := batch.Header{Kind: out.Kind, Resource: "dept-a.people", Grant: "g1", Sequence: p.seq, Schema: out.Schema, Rows: out.Rows}
			var ch connectors.Changes
			if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, &ch); err != nil {
				t.Fatal(err)
			}
			if out.Schema.Phase == batch.PhaseDigest {
				// What the provider's agent does with the receipt.
				raw, _ := json.Marshal(ch.Mismatch)
				if ch.Mismatch == nil {
					raw = []byte("[]")
				}
				out.Changes.Put(sqltable.KeyReconcileDiff, raw)
			}
			n++
			rows += out.Rows
		}
		p.st.Commit(&out.Changes)
	}
}

// dump is a table's rows in key order, every column as text.
func dump(t *testing.T, db *sql.DB, table string) []string {
	t.Helper()
	rows, err := db.Query("SELECT * FROM " + table + " ORDER BY 1")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for i, v := range vals {
			if v == nil {
				fmt.Fprintf(&b, "%s=NULL|", cols[i])
			} else {
				fmt.Fprintf(&b, "%s=%q|", cols[i], v)
			}
		}
		out = append(out, b.String())
	}
	return out
}

func equalTables(t *testing.T, a, b *sql.DB, table string, except ...string) {
	t.Helper()
	da, db := dump(t, a, table), dump(t, b, table)
	if len(da) != len(db) {
		t.Fatalf("%s: %d rows at the source, %d at the target", table, len(da), len(db))
	}
	for i := range da {
		if da[i] != db[i] {
			t.Fatalf("%s row %d differs:\nsource %s\ntarget %s", table, i, da[i], db[i])
		}
	}
}

const people = `CREATE TABLE people (
  id BIGINT PRIMARY KEY,
  name VARCHAR(50) NOT NULL,
  amount DECIMAL(18,4),
  born DATE,
  photo BLOB,
  note TEXT,
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  KEY (updated_at, id)
)`

func TestSnapshotThenIncremental(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people)
	for i := range 2500 {
		exec(t, p.from, fmt.Sprintf(`INSERT INTO people (id, name, amount, born, photo, note) VALUES (%d, '张三%d', %d.0105, '1990-01-02', X'00FF10', IF(%d %% 7 = 0, NULL, ''))`, i, i, i, i))
	}
	p.open(t)
	if n := p.drain(t, 64<<10); n < 2 {
		t.Fatalf("want several batches for 2500 rows at 64 KiB, got %d", n)
	}
	equalTables(t, p.from, p.to, "people")
	exec(t, p.from, `UPDATE people SET name = '李四', amount = -0.0001 WHERE id < 10`, `INSERT INTO people (id, name) VALUES (99999, '王五')`)
	p.drain(t, 64<<10)
	equalTables(t, p.from, p.to, "people")
}

func TestDescribeErrors(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, `CREATE TABLE nokey (a INT, updated_at DATETIME)`)
	for _, c := range []struct {
		edit func(*sqltable.SourceConfig)
		want string
	}{
		{func(c *sqltable.SourceConfig) { c.Table = "missing" }, "table missing does not exist"},
		{func(c *sqltable.SourceConfig) { c.Table = "nokey" }, "has no primary key"},
		{func(c *sqltable.SourceConfig) { c.DSN = strings.Replace(c.DSN, ":", ":x", 1) }, "Access denied"},
	} {
		sc := *p.srcConf
		c.edit(&sc)
		_, err := sc.OpenSource(quiet)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "dept-a.people") && !strings.Contains(err.Error(), "dsn") {
			t.Errorf("want %q naming the resource or the dsn, got %v", c.want, err)
		}
	}
	_ = time.Second
}

// TestSnapshotIsConsistentAndHandsOver changes rows while a snapshot is
// being read: the snapshot pages do not see them, and the incremental
// reads that follow carry them, so nothing is lost in the hand-over.
func TestSnapshotIsConsistentAndHandsOver(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people)
	for i := range 3000 {
		exec(t, p.from, fmt.Sprintf(`INSERT INTO people (id, name) VALUES (%d, '行%d')`, i, i))
	}
	p.open(t)
	// One page of the snapshot.
	out := connectors.Output{Limit: 1 << 10}
	if err := p.src.Next(context.Background(), p.st, &out); err != nil {
		t.Fatal(err)
	}
	p.st.Commit(&out.Changes)
	// Changes behind and ahead of the snapshot's position.
	exec(t, p.from, `UPDATE people SET name = '改了' WHERE id IN (1, 2999)`, `DELETE FROM people WHERE id = 2998`,
		`INSERT INTO people (id, name) VALUES (5000, '新来的')`)
	var snapRows []string
	for {
		out := connectors.Output{Limit: 1 << 20}
		if err := p.src.Next(context.Background(), p.st, &out); err != nil {
			t.Fatal(err)
		}
		rr := batch.NewRowReader(bytes.NewReader(out.Body), out.Schema)
		for {
			r, err := rr.Next()
			if err != nil {
				break
			}
			snapRows = append(snapRows, string(r.Values[0])+"="+string(r.Values[1]))
		}
		p.st.Commit(&out.Changes)
		if ph, _, _ := p.st.Get("phase"); string(ph) != "snapshot" {
			break
		}
	}
	joined := strings.Join(snapRows, ",")
	if !strings.Contains(joined, "2999=行2999") || !strings.Contains(joined, "2998=行2998") || strings.Contains(joined, "5000=") {
		t.Fatalf("the snapshot saw changes made after it began: %s", clip(joined[len(joined)-80:]))
	}
	// The incremental reads carry the changes (deletes are for soft_delete
	// or reconcile, so only updates and inserts are checked here).
	p.drain(t, 1<<20)
	var name string
	p.to.QueryRow(`SELECT name FROM people WHERE id = 2999`).Scan(&name)
	if name != "改了" {
		t.Fatalf("row 2999 is %q at the target, want the update made during the snapshot", name)
	}
	var n int
	p.to.QueryRow(`SELECT COUNT(*) FROM people WHERE id = 5000`).Scan(&n)
	if n != 1 {
		t.Fatal("the row inserted during the snapshot did not arrive")
	}
}

// TestLagCatchesLateCommits holds a transaction open across an incremental
// read: its row carries a watermark older than rows committed meanwhile.
// With a lag longer than the transaction, the row still arrives; with no
// lag it would be skipped for good, which the second half shows.
func TestLagCatchesLateCommits(t *testing.T) {
	for _, lag := range []time.Duration{3 * time.Second, 0} {
		t.Run(fmt.Sprint("lag ", lag), func(t *testing.T) {
			p := newPair(t, func(c *sqltable.SourceConfig) { c.Lag = lag }, nil)
			exec(t, p.from, people, `INSERT INTO people (id, name) VALUES (1, 'a'), (2, 'b')`)
			p.open(t)
			p.drain(t, 1<<20)
			late, err := p.from.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer late.Rollback()
			if _, err := late.Exec(`UPDATE people SET name = '晚提交' WHERE id = 1`); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1200 * time.Millisecond)
			exec(t, p.from, `UPDATE people SET name = '早提交' WHERE id = 2`)
			time.Sleep(100 * time.Millisecond)
			p.drain(t, 1<<20)
			if err := late.Commit(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(lag + 500*time.Millisecond)
			p.drain(t, 1<<20)
			var a, b string
			p.to.QueryRow(`SELECT name FROM people WHERE id = 1`).Scan(&a)
			p.to.QueryRow(`SELECT name FROM people WHERE id = 2`).Scan(&b)
			if b != "早提交" {
				t.Fatalf("the early commit did not arrive: %q", b)
			}
			if lag > 0 && a != "晚提交" {
				t.Fatalf("with lag %s the late commit was skipped: %q", lag, a)
			}
			if lag == 0 && a == "晚提交" {
				t.Fatal("with no lag the late commit arrived; this test no longer shows what the lag is for")
			}
		})
	}
}

// TestReconcile repairs what watermarks cannot see: rows deleted outright
// at the source, rows changed at the target behind the agent's back, and
// rows the target has that the source never had. Only the differing
// buckets travel.
func TestReconcile(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people)
	exec(t, p.from, `INSERT INTO people (id, name, amount, note) SELECT seq, CONCAT('人', seq), seq / 100, IF(seq % 2 = 0, '', NULL) FROM seq_1_to_20000`)
	p.open(t)
	p.drain(t, 1<<20)
	equalTables(t, p.from, p.to, "people")
	exec(t, p.from, `DELETE FROM people WHERE id IN (5, 500, 5000)`)
	exec(t, p.to, `UPDATE people SET amount = 7.77 WHERE id = 77`, `UPDATE people SET note = '改过' WHERE id = 78`,
		`INSERT INTO people (id, name, updated_at) VALUES (99999, '多余的', '2000-01-01')`)
	p.st.KV[sqltable.KeyReconcileRequest] = []byte("now")
	batches, rows := p.drainRows(t, 1<<20)
	equalTables(t, p.from, p.to, "people")
	if batches < 2 {
		t.Fatalf("want a digest and at least one replace batch, got %d batches", batches)
	}
	if rows == 0 || rows > 20000/4 {
		t.Fatalf("%d rows resent of 20000 for 6 differing rows: only differing buckets should travel", rows)
	}
	for _, k := range []string{sqltable.KeyReconcileRequest, sqltable.KeyReconcileDiff} {
		if _, ok := p.st.KV[k]; ok {
			t.Fatalf("state key %s left behind", k)
		}
	}
	// A second reconciliation finds nothing to send.
	p.st.KV[sqltable.KeyReconcileRequest] = []byte("now")
	if _, rows := p.drainRows(t, 1<<20); rows != 0 {
		t.Fatalf("a reconciliation of equal tables resent %d rows", rows)
	}
}
