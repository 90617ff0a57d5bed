package mysql_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// snapshotBatch reads the table's first snapshot batch, all of it.
func snapshotBatch(t *testing.T, p *pair) (*batch.Header, []byte) {
	t.Helper()
	out := connectors.Output{Limit: 64 << 20}
	if err := p.src.Next(context.Background(), p.st, &out); err != nil {
		t.Fatal(err)
	}
	if out.Schema.Phase != "snapshot" {
		t.Fatalf("phase %q, want snapshot", out.Schema.Phase)
	}
	return &batch.Header{Kind: out.Kind, Resource: "dept-a.people", Grant: "g1", Sequence: 1, Schema: out.Schema, Rows: out.Rows}, out.Body
}

// TestBulkParts: a snapshot batch is loaded in two parts over two
// connections. After a crash that left one part committed and not the
// other, applying the batch again loads only the missing part.
func TestBulkParts(t *testing.T) {
	p := newPair(t, nil, nil)
	exec(t, p.from, people, `INSERT INTO people (id, name, amount, born, photo, note)
		SELECT seq, CONCAT('张三', seq), seq / 100, '1990-01-02', IF(seq % 3 = 0, NULL, X'00FF5C0A09'), IF(seq % 7 = 0, NULL, IF(seq % 2 = 0, '', 'a\tb\\c
d')) FROM seq_1_to_10000`)
	p.open(t)
	h, body := snapshotBatch(t, p)
	if err := p.sink.Apply(context.Background(), h, bytes.NewReader(body), nil, &connectors.Changes{}); err != nil {
		t.Fatal(err)
	}
	equalTables(t, p.from, p.to, "people")
	var parts int
	p.to.QueryRow(`SELECT COUNT(*) FROM qz_applied_parts`).Scan(&parts)
	if parts != 0 {
		t.Fatalf("%d part records left after the batch was recorded", parts)
	}
	// The crash: part 1 (the second half of the rows) committed, part 0
	// and the batch's record did not.
	exec(t, p.to, `DELETE FROM qz_applied`, `DELETE FROM people WHERE id <= 5000`,
		`INSERT INTO qz_applied_parts (grant_id, seq, part) VALUES ('g1', 1, 201)`, // part 1 of 2 (2*100 + 1)
		`UPDATE people SET name = '第二部分' WHERE id = 9000`)
	if err := p.sink.Apply(context.Background(), h, bytes.NewReader(body), nil, &connectors.Changes{}); err != nil {
		t.Fatal(err)
	}
	var name string
	p.to.QueryRow(`SELECT name FROM people WHERE id = 9000`).Scan(&name)
	if name != "第二部分" {
		t.Fatalf("the part recorded as loaded was loaded again (row 9000 is %q)", name)
	}
	exec(t, p.to, `UPDATE people SET name = '张三9000' WHERE id = 9000`)
	equalTables(t, p.from, p.to, "people")
	var seq int
	p.to.QueryRow(`SELECT seq FROM qz_applied WHERE grant_id = 'g1'`).Scan(&seq)
	if seq != 1 {
		t.Fatalf("qz_applied holds %d, want 1", seq)
	}
}

// TestBulkTooLong: LOAD DATA LOCAL may store a value too long for its
// column truncated, with a warning, where INSERT fails (MySQL does; MariaDB
// refuses it as INSERT does). Either way nothing truncated is stored: a load
// that warns is undone and the batch fails, to be applied with INSERT.
func TestBulkTooLong(t *testing.T) {
	p := newPair(t, nil, func(c *sqltable.SinkConfig) { c.CreateTable = false })
	exec(t, p.from, people, `INSERT INTO people (id, name) VALUES (1, '一个很长的名字')`)
	exec(t, p.to, strings.Replace(people, "name VARCHAR(50)", "name VARCHAR(3)", 1))
	p.open(t)
	h, body := snapshotBatch(t, p)
	for range 2 {
		err := p.sink.Apply(context.Background(), h, bytes.NewReader(body), nil, &connectors.Changes{})
		if err == nil || !(errors.Is(err, sqltable.ErrBulkRefused) && strings.Contains(err.Error(), "warned") || strings.Contains(err.Error(), "Data too long")) {
			t.Fatalf("a value too long for its column: %v", err)
		}
		var n int
		p.to.QueryRow(`SELECT COUNT(*) FROM people`).Scan(&n)
		if n != 0 {
			t.Fatalf("%d rows stored from a batch that failed", n)
		}
	}
}

// TestBulkKeepsConsumerColumns: a target with a column of its own is not
// bulk loaded (REPLACE would reset the column); its values stay.
func TestBulkKeepsConsumerColumns(t *testing.T) {
	p := newPair(t, nil, func(c *sqltable.SinkConfig) { c.CreateTable = false })
	exec(t, p.from, people, `INSERT INTO people (id, name) SELECT seq, CONCAT('张', seq) FROM seq_1_to_5000`)
	exec(t, p.to, strings.Replace(people, "note TEXT,", "note TEXT, memo VARCHAR(10) NOT NULL DEFAULT '',", 1),
		`INSERT INTO people (id, name, memo) VALUES (7, 'old', 'kept')`)
	p.open(t)
	h, body := snapshotBatch(t, p)
	if err := p.sink.Apply(context.Background(), h, bytes.NewReader(body), nil, &connectors.Changes{}); err != nil {
		t.Fatal(err)
	}
	var name, memo string
	p.to.QueryRow(`SELECT name, memo FROM people WHERE id = 7`).Scan(&name, &memo)
	if name != "张7" || memo != "kept" {
		t.Fatalf("row 7 is (%q, %q), want the provider's name and the consumer's memo kept", name, memo)
	}
}
