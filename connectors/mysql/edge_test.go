package mysql_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/mask"
)

// TestBinaryKey pages through a table keyed by 16 raw bytes (a UUID):
// key bytes that are not UTF-8 must survive the checkpoint exactly.
func TestBinaryKey(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.Table, c.PageRows = "u", 50 }, func(c *sqltable.SinkConfig) { c.Table = "u" })
	exec(t, p.from, `CREATE TABLE u (id BINARY(16) PRIMARY KEY, v INT, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), KEY (updated_at))`,
		`INSERT INTO u (id, v) SELECT UNHEX(MD5(seq)), seq FROM seq_1_to_200`)
	p.open(t)
	p.drain(t, 300)
	equalTables(t, p.from, p.to, "u")
	exec(t, p.from, `UPDATE u SET v = -v WHERE v % 3 = 0`)
	if n := p.drain(t, 300); n == 0 || n > 50 {
		t.Fatalf("%d batches for 66 updated rows: the incremental checkpoint does not move", n)
	}
	equalTables(t, p.from, p.to, "u")
}

// TestNumericWatermark follows a version number instead of a time: the
// hand-over starts at the largest number, and later changes arrive.
func TestNumericWatermark(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.Table, c.Watermark = "v", "ver" }, func(c *sqltable.SinkConfig) { c.Table = "v" })
	exec(t, p.from, `CREATE TABLE v (id INT PRIMARY KEY, name VARCHAR(20), ver BIGINT NOT NULL, KEY (ver))`,
		`INSERT INTO v SELECT seq, CONCAT('n', seq), seq FROM seq_1_to_100`)
	p.open(t)
	p.drain(t, 1<<20)
	equalTables(t, p.from, p.to, "v")
	exec(t, p.from, `UPDATE v SET name = '改', ver = 101 WHERE id = 7`, `INSERT INTO v VALUES (500, '新', 102)`)
	p.drain(t, 1<<20)
	equalTables(t, p.from, p.to, "v")
	if p.drain(t, 1<<20) != 0 {
		t.Fatal("the source keeps sending after the changes were read")
	}
}

// TestNumericWatermarkEmptyTable starts on an empty table: everything
// written after the (empty) snapshot arrives.
func TestNumericWatermarkEmptyTable(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.Table, c.Watermark = "v", "ver" }, func(c *sqltable.SinkConfig) { c.Table = "v" })
	exec(t, p.from, `CREATE TABLE v (id INT PRIMARY KEY, ver BIGINT NOT NULL, KEY (ver))`)
	p.open(t)
	p.drain(t, 1<<20)
	exec(t, p.from, `INSERT INTO v VALUES (1, -5), (2, 0), (3, 9)`)
	p.drain(t, 1<<20)
	equalTables(t, p.from, p.to, "v")
}

// TestReconcileCaseFoldingTarget: the consumer's table compares keys
// case-insensitively (MariaDB's default collation), and the provider
// changed a key's case. Reconcile must end with the provider's row, never
// with none.
func TestReconcileCaseFoldingTarget(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.Table = "k" }, func(c *sqltable.SinkConfig) { c.Table, c.CreateTable = "k", false })
	exec(t, p.from, `CREATE TABLE k (code VARCHAR(10) COLLATE utf8mb4_bin PRIMARY KEY, v INT, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), KEY (updated_at))`,
		`INSERT INTO k (code, v) VALUES ('abc', 1), ('x', 2)`)
	exec(t, p.to, `CREATE TABLE k (code VARCHAR(10) COLLATE utf8mb4_unicode_ci PRIMARY KEY, v INT, updated_at DATETIME(6) NOT NULL)`)
	p.open(t)
	p.drain(t, 1<<20)
	exec(t, p.from, `UPDATE k SET code = 'ABC', v = 3 WHERE code = 'abc'`)
	p.drain(t, 1<<20)
	p.st.KV[sqltable.KeyReconcileRequest] = []byte("now")
	p.drain(t, 1<<20)
	var code string
	var v, n int
	p.to.QueryRow(`SELECT COUNT(*) FROM k WHERE code = 'abc'`).Scan(&n)
	p.to.QueryRow(`SELECT code, v FROM k WHERE code = 'abc'`).Scan(&code, &v)
	if n != 1 || code != "ABC" || v != 3 {
		t.Fatalf("consumer has %d rows for abc/ABC, %q = %d; want the provider's ABC = 3", n, code, v)
	}
}

// TestDigestAppliedTwice: a crash after the consumer's database commit but
// before the agent's makes it apply a digest again; the signed answer must
// still name the differing buckets.
func TestDigestAppliedTwice(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people, `INSERT INTO people (id, name) SELECT seq, CONCAT('人', seq) FROM seq_1_to_100`)
	p.open(t)
	p.drain(t, 1<<20)
	exec(t, p.to, `UPDATE people SET name = '漂移' WHERE id = 50`)
	p.st.KV[sqltable.KeyReconcileRequest] = []byte("now")
	out := connectors.Output{Limit: 1 << 20}
	if err := p.src.Next(context.Background(), p.st, &out); err != nil || out.Schema.Phase != batch.PhaseDigest {
		t.Fatalf("want a digest: %v", err)
	}
	p.seq++
	h := batch.Header{Kind: out.Kind, Resource: "r", Grant: "g1", Sequence: p.seq, Schema: out.Schema}
	var first, again connectors.Changes
	if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(nil), nil, &first); err != nil {
		t.Fatal(err)
	}
	if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(nil), nil, &again); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(first.Mismatch)
	b, _ := json.Marshal(again.Mismatch)
	if len(first.Mismatch) != 1 || string(a) != string(b) {
		t.Fatalf("first answer %s, answer after a re-apply %s", a, b)
	}
}

// TestBadBucketsFromConsumer: buckets out of range in a consumer's answer
// are ignored, not a reason to stop the line.
func TestBadBucketsFromConsumer(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people, `INSERT INTO people (id, name) VALUES (1, 'a')`)
	p.open(t)
	p.drain(t, 1<<20)
	p.st.KV["rc_plan"] = []byte(`{"buckets":16,"group":4}`)
	p.st.KV[sqltable.KeyReconcileDiff] = []byte(`[-1, 99999]`)
	p.drain(t, 1<<20)
	if _, ok := p.st.KV[sqltable.KeyReconcileDiff]; ok {
		t.Fatal("the bad answer is still pending")
	}
}

func TestKeyAndColumnChecks(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, "CREATE TABLE n (id INT PRIMARY KEY, code VARCHAR(10) NULL, `a.b` INT, updated_at DATETIME NOT NULL, UNIQUE KEY (code), KEY (updated_at))")
	for _, c := range []struct {
		edit func(*sqltable.SourceConfig)
		want string
	}{
		{func(c *sqltable.SourceConfig) {
			c.Table, c.Key, c.Columns = "n", []string{"code"}, []string{"code", "updated_at"}
		}, "key column code allows NULL"},
		{func(c *sqltable.SourceConfig) { c.Table = "n" }, `column "a.b" has a character`},
	} {
		sc := *p.srcConf
		c.edit(&sc)
		_, err := sc.OpenSource(quiet)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want %q, got %v", c.want, err)
		}
	}
	sc := *p.srcConf
	sc.Table, sc.Columns = "n", []string{"id", "code", "updated_at"}
	src, err := sc.OpenSource(quiet)
	if err != nil {
		t.Fatalf("leaving the column out must work: %v", err)
	}
	src.Close()
}

// TestCharsetRefused: interpolating values is safe only in utf8mb4.
func TestCharsetRefused(t *testing.T) {
	p := newPair(t, nil, nil)
	sc := *p.srcConf
	sc.DSN += "&charset=gbk"
	exec(t, p.from, people)
	if _, err := sc.OpenSource(quiet); err == nil || !strings.Contains(err.Error(), "gbk is not supported") {
		t.Fatalf("want charset gbk refused, got %v", err)
	}
}

// TestInvalidUTF8Refused: text that is not UTF-8 is refused at the sink
// rather than written under a wrong character set.
func TestInvalidUTF8Refused(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people)
	p.open(t)
	cols := []batch.Column{{Name: "id", Type: batch.TypeInt}, {Name: "name", Type: batch.TypeString, Length: 50}, {Name: "updated_at", Type: batch.TypeDatetime, Precision: 6}}
	s := &batch.Schema{Columns: cols, Key: []string{"id"}, Fingerprint: batch.SchemaFingerprint(cols, []string{"id"})}
	var w batch.RowWriter
	w.Upsert([][]byte{[]byte("1"), []byte("\xbf'), (2, 0x41) -- "), []byte("2026-01-01 00:00:00.000000")})
	h := batch.Header{Kind: batch.KindRows, Resource: "r", Grant: "g", Sequence: 1, Schema: s, Rows: 1}
	err := p.sink.Apply(context.Background(), &h, bytes.NewReader(w.Bytes()), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
		t.Fatalf("want the value refused, got %v", err)
	}
}

// TestQueryResource publishes a declared SELECT over two tables, keyed by
// a column of the result, incrementally.
func TestQueryResource(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) {
		c.Table, c.Key, c.Watermark = "", []string{"id"}, "updated_at"
		c.Query = `SELECT p.id, p.name, h.address, GREATEST(p.updated_at, h.updated_at) AS updated_at FROM people p JOIN households h ON h.id = p.household`
	}, func(c *sqltable.SinkConfig) { c.Table = "people_with_address" })
	exec(t, p.from, `CREATE TABLE households (id INT PRIMARY KEY, address VARCHAR(100), updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))`,
		`CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(20), household INT, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))`,
		`INSERT INTO households (id, address) VALUES (1, '海淀区'), (2, '朝阳区')`,
		`INSERT INTO people (id, name, household) SELECT seq, CONCAT('人', seq), 1 + seq % 2 FROM seq_1_to_300`)
	p.open(t)
	p.drain(t, 4<<10)
	view := `CREATE VIEW people_with_address AS SELECT p.id, p.name, h.address, GREATEST(p.updated_at, h.updated_at) AS updated_at FROM people p JOIN households h ON h.id = p.household`
	exec(t, p.from, view)
	equalTables(t, p.from, p.to, "people_with_address")
	exec(t, p.from, `UPDATE households SET address = '西城区' WHERE id = 2`, `UPDATE people SET name = '改' WHERE id = 3`)
	p.drain(t, 4<<10)
	equalTables(t, p.from, p.to, "people_with_address")
}

// TestWatermarkTimeZone: the application writes DATETIME in Beijing time
// on a server whose clock zone is UTC. With time_zone: "+08:00" the bound
// follows the writers' clock; without it, the agent warns at the start.
func TestWatermarkTimeZone(t *testing.T) {
	for _, zone := range []string{"+08:00", ""} {
		t.Run("zone "+zone, func(t *testing.T) {
			var log bytes.Buffer
			p := newPair(t, func(c *sqltable.SourceConfig) { c.Table, c.TimeZone = "z", zone }, func(c *sqltable.SinkConfig) { c.Table = "z" })
			p.log = &log
			exec(t, p.from, `CREATE TABLE z (id INT PRIMARY KEY, v INT, updated_at DATETIME(6) NOT NULL, KEY (updated_at))`)
			beijing := `CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', '+08:00')`
			exec(t, p.from, `INSERT INTO z SELECT seq, seq, `+beijing+` FROM seq_1_to_10`)
			p.open(t)
			p.drain(t, 1<<20)
			exec(t, p.from, `UPDATE z SET v = -1, updated_at = `+beijing+` WHERE id = 5`)
			time.Sleep(10 * time.Millisecond)
			p.drain(t, 1<<20)
			var v int
			p.to.QueryRow(`SELECT v FROM z WHERE id = 5`).Scan(&v)
			warned := strings.Contains(log.String(), "ahead of the database clock")
			if zone != "" && (v != -1 || warned) {
				t.Fatalf("with time_zone %s: update arrived %v, warned %v", zone, v == -1, warned)
			}
			if zone == "" && !warned {
				t.Fatalf("no warning about watermarks ahead of the clock:\n%s", log.String())
			}
		})
	}
}

// TestProjectionAndMasking: a grant's fields and masking rules are applied
// before a value is written into the batch; ungranted columns never
// appear; a hashed key still identifies rows, and reconcile agrees on the
// masked values.
func TestProjectionAndMasking(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.Table = "citizens" }, func(c *sqltable.SinkConfig) { c.Table = "citizens" })
	exec(t, p.from, `CREATE TABLE citizens (id_no CHAR(18) PRIMARY KEY, name VARCHAR(20), phone VARCHAR(11), income DECIMAL(12,2), updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), KEY (updated_at))`,
		`INSERT INTO citizens (id_no, name, phone, income) VALUES ('110101199003078515', '张三丰', '13812345678', 8888.88), ('110101199003071234', '李四', '13900001111', 1234.56)`)
	rule := func(s string) mask.Rule {
		r, err := mask.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	proj := &connectors.Projection{Fields: []string{"name", "phone"}, Masks: map[string]mask.Rule{"name": rule("name"), "phone": rule("phone"), "id_no": rule("hash")}, Secret: mask.Secret([]byte("k"), "g1")}
	p.open(t)
	out := connectors.Output{Limit: 1 << 20, Project: proj}
	if err := p.src.Next(context.Background(), p.st, &out); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range out.Schema.Columns {
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "id_no,name,phone" {
		t.Fatalf("columns sent: %v (income and updated_at are not granted)", names)
	}
	for _, secret := range []string{"110101199003078515", "张三丰", "13812345678", "8888.88", "1234.56", "李四"} {
		if bytes.Contains(out.Body, []byte(secret)) {
			t.Fatalf("the batch carries %q", secret)
		}
	}
	if !bytes.Contains(out.Body, []byte("138****5678")) || !bytes.Contains(out.Body, []byte("张**")) {
		t.Fatalf("masked values missing from %q", out.Body)
	}
	h := batch.Header{Kind: out.Kind, Resource: "r", Grant: "g1", Sequence: 1, Schema: out.Schema, Rows: out.Rows}
	if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, nil); err != nil {
		t.Fatal(err)
	}
	p.st.Commit(&out.Changes)
	var n int
	p.to.QueryRow(`SELECT COUNT(*) FROM citizens WHERE LENGTH(id_no) = 32 AND phone LIKE '138****%'`).Scan(&n)
	if n != 1 {
		t.Fatal("the consumer's table does not hold the masked rows")
	}
	// An update arrives on the same hashed key.
	exec(t, p.from, `UPDATE citizens SET phone = '13700009999' WHERE name = '李四'`)
	p.seq = 1
	digested := false
	for {
		out := connectors.Output{Limit: 1 << 20, Project: proj}
		if err := p.src.Next(context.Background(), p.st, &out); err != nil {
			break
		}
		if !out.Empty() {
			p.seq++
			h := batch.Header{Kind: out.Kind, Resource: "r", Grant: "g1", Sequence: p.seq, Schema: out.Schema, Rows: out.Rows}
			var ch connectors.Changes
			if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, &ch); err != nil {
				t.Fatal(err)
			}
			if out.Schema.Phase == batch.PhaseDigest {
				digested = true
				if len(ch.Mismatch) != 0 {
					t.Fatalf("reconcile finds masked tables different: %v", ch.Mismatch)
				}
				raw, _ := json.Marshal(ch.Mismatch)
				out.Changes.Put(sqltable.KeyReconcileDiff, raw)
			}
		}
		p.st.Commit(&out.Changes)
		if _, asked := p.st.KV[sqltable.KeyReconcileRequest]; !asked && p.seq == 2 {
			p.st.KV[sqltable.KeyReconcileRequest] = []byte("now")
		}
	}
	if !digested {
		t.Fatal("no reconcile digest was compared")
	}
	p.to.QueryRow(`SELECT COUNT(*) FROM citizens`).Scan(&n)
	var phone string
	p.to.QueryRow(`SELECT phone FROM citizens WHERE name = '李*'`).Scan(&phone)
	if n != 2 || phone != "137****9999" {
		t.Fatalf("after the update: %d rows, phone %q", n, phone)
	}
	// A key masked so that rows could collide is refused.
	bad := &connectors.Projection{Masks: map[string]mask.Rule{"id_no": rule("idcard")}}
	out = connectors.Output{Limit: 1 << 20, Project: bad}
	if err := p.src.Next(context.Background(), p.st, &out); err == nil || !strings.Contains(err.Error(), "only hash keeps keys apart") {
		t.Fatalf("a lossy mask on the key: %v", err)
	}
}

// TestDestroy empties the target and its record of the grant.
func TestDestroy(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people, `INSERT INTO people (id, name) SELECT seq, CONCAT('人', seq) FROM seq_1_to_50`)
	p.open(t)
	p.drain(t, 1<<20)
	d, ok := p.sink.(connectors.Destroyer)
	if !ok {
		t.Fatal("the table sink cannot destroy")
	}
	what, err := d.Destroy(context.Background(), "g1", nil, nil)
	if err != nil || !strings.Contains(what, "50 rows of table people") {
		t.Fatalf("destroy: %q %v", what, err)
	}
	var n, m int
	p.to.QueryRow(`SELECT COUNT(*) FROM people`).Scan(&n)
	p.to.QueryRow(`SELECT COUNT(*) FROM qz_applied WHERE grant_id = 'g1'`).Scan(&m)
	if n != 0 || m != 0 {
		t.Fatalf("after destruction: %d rows, %d applied records", n, m)
	}
}

// TestUngrantedKeyTravelsHashed: a grant that does not name the key still
// gets rows it can tell apart, but never the key in clear; and the batch
// header does not give away the watermark of an ungranted column.
func TestUngrantedKeyTravelsHashed(t *testing.T) {
	p := newPair(t, func(c *sqltable.SourceConfig) { c.Table = "citizens" }, func(c *sqltable.SinkConfig) { c.Table = "citizens" })
	exec(t, p.from, `CREATE TABLE citizens (id_no CHAR(18) PRIMARY KEY, name VARCHAR(20), updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), KEY (updated_at))`,
		`INSERT INTO citizens (id_no, name) VALUES ('110101199003078515', '张三丰')`)
	p.open(t)
	proj := &connectors.Projection{Fields: []string{"name"}, Secret: mask.Secret([]byte("k"), "g1")}
	var bodies, headers []byte
	for range 3 {
		out := connectors.Output{Limit: 1 << 20, Project: proj}
		if err := p.src.Next(context.Background(), p.st, &out); err != nil {
			break
		}
		bodies = append(bodies, out.Body...)
		if out.Schema != nil {
			hj, _ := json.Marshal(out.Schema)
			headers = append(headers, hj...)
		}
		p.st.Commit(&out.Changes)
		if ph := p.st.KV["phase"]; string(ph) == "incremental" {
			exec(t, p.from, `UPDATE citizens SET name = '张三' WHERE name = '张三丰'`)
		}
	}
	if bytes.Contains(bodies, []byte("110101199003078515")) || !bytes.Contains(bodies, []byte("张三丰")) {
		t.Fatalf("the key travelled in clear, or the granted field did not: %q", bodies)
	}
	if bytes.Contains(headers, []byte(`"from"`)) || bytes.Contains(headers, []byte("updated_at")) {
		t.Fatalf("the header gives away the ungranted watermark: %s", headers)
	}
}
