package sqltable_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
	"github.com/qianzhi/qianzhi/connectors/sqlite"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// agingDialect is SQLite whose snapshots grow too old after a few reads,
// as Oracle's do when their undo is gone.
type agingDialect struct {
	sqlite.Dialect
	reads *int
	renew *int
}

type agingSnapshot struct {
	sqltable.Snapshot
	d agingDialect
}

type agingQuerier struct {
	sqltable.Querier
	d agingDialect
}

func (d agingDialect) Snapshot(ctx context.Context, db *sql.DB, tok string) (sqltable.Snapshot, error) {
	*d.renew++
	sn, err := d.Dialect.Snapshot(ctx, db, tok)
	return agingSnapshot{sn, d}, err
}

func (s agingSnapshot) Q() sqltable.Querier { return agingQuerier{s.Snapshot.Q(), s.d} }

func (q agingQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	*q.d.reads++
	if *q.d.reads == 3 {
		return nil, fmt.Errorf("ORA-01555: %w", sqltable.ErrSnapshotTooOld)
	}
	return q.Querier.QueryContext(ctx, query, args...)
}

// TestSnapshotTooOldGoesOn reads a snapshot whose view expires midway: the
// source opens a new one and goes on from its checkpoint, losing no row.
func TestSnapshotTooOldGoesOn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) INSERT INTO t SELECT i, 'v' || i FROM n`); err != nil {
		t.Fatal(err)
	}
	var reads, renew int
	d := agingDialect{reads: &reads, renew: &renew}
	c := sqltable.NewSourceConfig(d)
	c.ID, c.DSN, c.Table, c.Strategy, c.PageRows = "r", path, "t", sqltable.StrategySnapshot, 100
	src, err := c.OpenSource(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	st := connectorstest.NewMemState("src/g")
	seen := map[string]int{}
	for {
		out := connectors.Output{Limit: 1 << 20}
		err := src.Next(context.Background(), st, &out)
		if errors.Is(err, connectors.ErrIdle) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if out.Schema != nil {
			rr := batch.NewRowReader(bytes.NewReader(out.Body), out.Schema)
			for {
				r, err := rr.Next()
				if err != nil {
					break
				}
				seen[string(r.Values[0])]++
			}
		}
		st.Commit(&out.Changes)
	}
	if renew != 2 {
		t.Fatalf("snapshots begun: %d, want 2 (one renewed)", renew)
	}
	if len(seen) != 1000 {
		t.Fatalf("%d distinct rows read, want 1000", len(seen))
	}
}
