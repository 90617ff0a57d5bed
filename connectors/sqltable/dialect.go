// Package sqltable moves tables: a provider's table (or declared query) is
// read as a keyset-paginated snapshot and then incrementally by a watermark
// column, and a consumer's table receives the rows by upsert, each batch in
// one transaction together with its (grant, sequence) record.
//
// The engine-specific parts — SQL text, type mapping, snapshot consistency,
// database time — sit behind Dialect; the mysql, oracle and sqlite kinds each
// provide one and register themselves with the shared config types here.
package sqltable

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Querier is what both *sql.DB, *sql.Conn and *sql.Tx offer.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Table is what Describe finds out about a table.
type Table struct {
	// Name is the table as the user wrote it.
	Name string
	// Columns in table order, with logical types.
	Columns []batch.Column
	// Native holds each column's type as the engine names it, for messages.
	Native map[string]string
	// Key is the primary key, or nil.
	Key []string
	// Unique lists the column sets of the unique indexes (and the key).
	Unique [][]string
	// Leading lists the columns that lead some index.
	Leading map[string]bool
}

// Snapshot is a consistent view for reading a table in many pages.
type Snapshot interface {
	// Q runs the snapshot's reads.
	Q() Querier
	// From returns the table reference to read from inside the snapshot
	// (Oracle: "T AS OF SCN n"); usually the table itself.
	From(table string) string
	// Token is what must be kept to resume the same view after a restart
	// ("" when the engine cannot resume one).
	Token() string
	Close() error
}

// BulkLoader is a dialect with a faster way to upsert many rows than
// multi-row statements (MySQL: LOAD DATA LOCAL INFILE … REPLACE, about
// 1.5 times the rows a second). The sink uses it for snapshot batches —
// upserts and deletes of distinct keys, in any order — when the target's
// only unique index is the key: REPLACE deletes a row colliding on any
// unique index. next yields each row's values until io.EOF. An error
// wrapping ErrBulkRefused means the server does not allow it.
type BulkLoader interface {
	BulkUpsert(ctx context.Context, tx *sql.Tx, table string, cols []batch.Column, next func() ([][]byte, error)) error
	// BulkSafe reports whether a bulk load into table does nothing an
	// upsert would not (no triggers, no foreign keys pointing at it).
	BulkSafe(ctx context.Context, db *sql.DB, table string) (bool, error)
}

// ErrBulkRefused means the server refused a bulk load (MySQL's local_infile
// is off); the sink goes back to multi-row statements.
var ErrBulkRefused = errors.New("bulk load refused by the server")

// Dialect is one database engine's SQL.
type Dialect interface {
	// Name is the connector kind, e.g. "mysql".
	Name() string
	// Open connects and checks the connection.
	Open(ctx context.Context, dsn string) (*sql.DB, error)
	// Quote quotes an identifier (a name with a dot is schema.table).
	Quote(ident string) string
	// Param is the placeholder for the i-th argument, from 1.
	Param(i int) string
	// Bind wraps a placeholder so the engine reads canonical text of
	// column c into the column's own type (e.g. Oracle TO_TIMESTAMP).
	Bind(c batch.Column, param string) string
	// Select is the expression that reads column c (already quoted as
	// ident) as something ToText turns into canonical text.
	Select(c batch.Column, ident string) string
	// Limit adds a row limit to a query ending in ORDER BY.
	Limit(query string, n int) string
	// Describe returns a table's columns, key and indexes; a missing table
	// is an error wrapping ErrNoTable.
	Describe(ctx context.Context, db *sql.DB, table string) (*Table, error)
	// DescribeQuery returns the columns a SELECT yields.
	DescribeQuery(ctx context.Context, db *sql.DB, query string) ([]batch.Column, map[string]string, error)
	// Explain returns the engine's plan for a query, as text.
	Explain(ctx context.Context, db *sql.DB, query string, args []any) (string, error)
	// Now returns the database's current time minus lag, as canonical
	// text of watermark column c. zone, when not empty, is the time zone
	// in which c's wall-clock values are written.
	Now(ctx context.Context, q Querier, c batch.Column, lag time.Duration, zone string) (string, error)
	// Snapshot begins a consistent read; token resumes an earlier one
	// where the engine can.
	Snapshot(ctx context.Context, db *sql.DB, token string) (Snapshot, error)
	// CreateTable is the DDL for a table holding schema s.
	CreateTable(table string, s *batch.Schema) (string, error)
	// UpsertRows is how many rows one upsert statement may carry for n
	// columns (1 for engines without a multi-row upsert).
	UpsertRows(ncols int) int
	// Upsert is the statement inserting or replacing rows rows of
	// columns cols keyed by key, with len(cols)*rows parameters.
	Upsert(table string, cols []batch.Column, key []string, rows int) string
	// BeginApply starts the transaction a batch is applied in.
	BeginApply(ctx context.Context, db *sql.DB) (*sql.Tx, error)
}

// ColumnType is a dialect's definition of one column in CREATE TABLE: its
// type and, where wanted, " NOT NULL".
type ColumnType func(c batch.Column, key bool) (string, error)

// NotNullUnlessNullable makes a ColumnType from a dialect's type mapping,
// adding " NOT NULL" to the columns that are not nullable.
func NotNullUnlessNullable(native func(batch.Column) (string, error)) ColumnType {
	return func(c batch.Column, _ bool) (string, error) {
		t, err := native(c)
		if err == nil && !c.Nullable {
			t += " NOT NULL"
		}
		return t, err
	}
}

// CreateTableSQL builds CREATE TABLE for a schema from a dialect's column
// types, with the key as primary key and suffix (table options) at the end.
func CreateTableSQL(d Dialect, table string, s *batch.Schema, colType ColumnType, suffix string) (string, error) {
	var defs []string
	for _, c := range s.Columns {
		t, err := colType(c, slices.Contains(s.Key, c.Name))
		if err != nil {
			return "", err
		}
		defs = append(defs, d.Quote(c.Name)+" "+t)
	}
	var key []string
	for _, k := range s.Key {
		key = append(key, d.Quote(k))
	}
	defs = append(defs, "PRIMARY KEY ("+strings.Join(key, ", ")+")")
	return "CREATE TABLE " + d.Quote(table) + " (\n  " + strings.Join(defs, ",\n  ") + "\n)" + suffix, nil
}

// InsertValues is "INSERT INTO table (cols) VALUES (…), (…)" with rows
// groups of placeholders, the start of a multi-row upsert.
func InsertValues(d Dialect, table string, cols []batch.Column, rows int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO " + d.Quote(table) + " (")
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d.Quote(c.Name))
	}
	b.WriteString(") VALUES ")
	n := 0
	for i := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(")
		for j := range cols {
			if j > 0 {
				b.WriteString(", ")
			}
			n++
			b.WriteString(d.Param(n))
		}
		b.WriteString(")")
	}
	return b.String()
}
