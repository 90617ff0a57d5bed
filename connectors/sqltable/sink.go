package sqltable

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// deleteKeys bounds the keys one DELETE statement names.
const deleteKeys = 500

type sink struct {
	cfg *SinkConfig
	d   Dialect
	db  *sql.DB
	log *slog.Logger

	mu      sync.Mutex
	checked string // fingerprint of the last schema the target was found to accept
	applied bool   // the applied table exists
	bulk    bool   // the target's only unique index is the key: snapshot batches may be bulk loaded
	refused bool   // the server refused a bulk load: use statements
	parts   bool   // the parts table exists
}

// appliedSchema is the table recording each grant's last applied batch.
var appliedSchema = func() *batch.Schema {
	s := &batch.Schema{Columns: []batch.Column{
		{Name: "grant_id", Type: batch.TypeString, Length: 128},
		{Name: "resource", Type: batch.TypeString, Length: 256},
		{Name: "seq", Type: batch.TypeInt},
		{Name: "applied_at", Type: batch.TypeString, Length: 40},
	}, Key: []string{"grant_id"}}
	s.Fingerprint = batch.SchemaFingerprint(s.Columns, s.Key)
	return s
}()

func openSink(cfg *SinkConfig, log *slog.Logger) (*sink, error) {
	db, err := cfg.open(cfg.dialect)
	if err != nil {
		return nil, err
	}
	return &sink{cfg: cfg, d: cfg.dialect, db: db, log: log}, nil
}

func (k *sink) Close() error { return k.db.Close() }

// Apply writes one batch and its (grant, sequence) record in one
// transaction. A batch at or below the recorded sequence was applied
// before a crash and changes nothing.
func (k *sink) Apply(ctx context.Context, h *batch.Header, body io.Reader, _ connectors.State, ch *connectors.Changes) error {
	if h.Kind != batch.KindRows || h.Schema == nil {
		return fmt.Errorf("resource %s: a %s batch cannot go into table %s: subscribe it with kind file", h.Resource, h.Kind, k.cfg.Table)
	}
	sch := h.Schema
	if err := k.prepare(ctx, h.Resource, sch); err != nil {
		return err
	}
	applied := false
	defer func() {
		if !applied {
			k.forget() // check the target again next time: it may have been changed or dropped
		}
	}()
	if bl, ok := k.bulkLoader(sch); ok && k.cfg.Parallel > 1 && h.Rows >= 2*minPartRows {
		if err := k.applyParts(ctx, bl, h, body); err != nil {
			if errors.Is(err, ErrBulkRefused) {
				k.refuseBulk(err)
			}
			return fmt.Errorf("resource %s: apply batch %d to %s: %w", h.Resource, h.Sequence, k.cfg.Table, err)
		}
		applied = true
		return nil
	}
	tx, err := k.d.BeginApply(ctx, k.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var seq int64
	err = tx.QueryRowContext(ctx, "SELECT "+k.d.Quote("seq")+" FROM "+k.d.Quote(k.cfg.AppliedTable)+" WHERE "+k.d.Quote("grant_id")+" = "+k.d.Param(1), h.Grant).Scan(&seq)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read %s: %w", k.cfg.AppliedTable, err)
	}
	if seq >= int64(h.Sequence) {
		k.log.Info("batch was applied before; nothing to do", "grant", h.Grant, "seq", h.Sequence)
		if sch.Phase == batch.PhaseDigest && ch != nil {
			// The receipt is signed anew: it must carry the comparison
			// again, not an empty one. Comparing only reads.
			diff, err := k.compare(ctx, sch)
			if err != nil {
				return fmt.Errorf("resource %s: reconcile: compare %s: %w", h.Resource, k.cfg.Table, err)
			}
			ch.Mismatch = diff
		}
		return nil
	}
	switch sch.Phase {
	case batch.PhaseDigest:
		diff, err := k.compare(ctx, sch)
		if err != nil {
			return fmt.Errorf("resource %s: reconcile: compare %s: %w", h.Resource, k.cfg.Table, err)
		}
		if ch != nil {
			ch.Mismatch = diff
		}
		k.log.Info("reconcile: compared with the provider's digest", "buckets", sch.Reconcile.Buckets, "differing", len(diff))
	case batch.PhaseReplace:
		// Empty the buckets, then write the provider's rows of them: a
		// target whose key collation folds case (or trailing spaces) holds
		// a row under a key spelled unlike the provider's, and deleting
		// after the upsert could take the row just written.
		if err := k.dropBuckets(ctx, tx, sch); err != nil {
			return fmt.Errorf("resource %s: reconcile: empty the differing buckets: %w", h.Resource, err)
		}
		if err := k.write(ctx, tx, sch, body); err != nil {
			return fmt.Errorf("resource %s: apply batch %d to %s: %w", h.Resource, h.Sequence, k.cfg.Table, err)
		}
	default:
		write := k.write
		if bl, ok := k.bulkLoader(sch); ok {
			write = func(ctx context.Context, tx *sql.Tx, sch *batch.Schema, body io.Reader) error {
				return k.writeBulk(ctx, bl, tx, sch, body)
			}
		}
		if err := write(ctx, tx, sch, body); err != nil {
			if errors.Is(err, ErrBulkRefused) {
				k.refuseBulk(err)
			}
			return fmt.Errorf("resource %s: apply batch %d to %s: %w", h.Resource, h.Sequence, k.cfg.Table, err)
		}
	}
	rec := []any{h.Grant, h.Resource, fmt.Sprint(h.Sequence), time.Now().UTC().Format(time.RFC3339Nano)}
	if _, err := tx.ExecContext(ctx, k.upsertSQL(k.cfg.AppliedTable, appliedSchema, 1), rec...); err != nil {
		return fmt.Errorf("record batch %d in %s: %w", h.Sequence, k.cfg.AppliedTable, err)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	applied = true
	return nil
}

// prepare makes sure the target can take rows of sch: the applied table
// exists, the target exists (or is created), has every column and a unique
// key on the key columns. It remembers a schema that passed, and checks
// again whenever the schema changes or an apply failed.
func (k *sink) prepare(ctx context.Context, resource string, sch *batch.Schema) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.checked == sch.Fingerprint {
		return nil
	}
	if !k.applied {
		if _, err := k.ensureTable(ctx, k.cfg.AppliedTable, appliedSchema, true); err != nil {
			return fmt.Errorf("resource %s: %w", resource, err)
		}
		k.applied = true
	}
	bulk, err := k.ensureTable(ctx, k.cfg.Table, sch, k.cfg.CreateTable)
	if err != nil {
		return fmt.Errorf("resource %s: %w", resource, err)
	}
	k.checked, k.bulk = sch.Fingerprint, bulk
	return nil
}

func (k *sink) forget() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.checked, k.applied = "", false
}

// ensureTable makes sure table exists and can take rows of sch, and
// reports whether its only unique index is the key.
func (k *sink) ensureTable(ctx context.Context, table string, sch *batch.Schema, create bool) (bool, error) {
	t, err := k.d.Describe(ctx, k.db, table)
	if errors.Is(err, ErrNoTable) {
		if !create {
			return false, fmt.Errorf("target table %s does not exist: create it, or set create_table: true in the subscription", table)
		}
		ddl, err := k.d.CreateTable(table, sch)
		if err != nil {
			return false, fmt.Errorf("create table %s: %w", table, err)
		}
		if _, err := k.db.ExecContext(ctx, ddl); err != nil {
			return false, fmt.Errorf("create table %s: %w [%s]", table, err, ddl)
		}
		k.log.Info("created target table", "table", table)
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("describe target table %s: %w", table, err)
	}
	have := map[string]bool{}
	for _, c := range t.Columns {
		have[c.Name] = true
	}
	var missing []string
	for _, c := range sch.Columns {
		if !have[c.Name] {
			missing = append(missing, c.Name)
		}
	}
	if len(missing) > 0 {
		var adds []string
		for _, n := range missing {
			c := sch.Columns[sch.Column(n)]
			one := &batch.Schema{Columns: []batch.Column{c}, Key: []string{c.Name}}
			ddl, _ := k.d.CreateTable("x", one)
			adds = append(adds, fmt.Sprintf("column %s (%s)%s", n, c.Type, columnHint(ddl, k.d.Quote(n))))
		}
		return false, fmt.Errorf("the provider now sends %s, which target table %s lacks: add %s to %s and this line resumes by itself; nothing is dropped meanwhile",
			strings.Join(adds, ", "), table, plural(len(missing), "it", "them"), table)
	}
	if !slices.ContainsFunc(t.Unique, func(u []string) bool { return sameSet(u, sch.Key) }) {
		return false, fmt.Errorf("target table %s has no primary key or unique index on %s, so rows cannot be updated in place: add one", table, strings.Join(sch.Key, ", "))
	}
	// REPLACE rewrites whole rows: only where the key is the one unique
	// index and the batch carries every column (a column only the
	// consumer has would be reset), and nothing reacts to the delete.
	if len(t.Unique) != 1 || len(t.Columns) != len(sch.Columns) {
		return false, nil
	}
	if bl, ok := k.d.(BulkLoader); ok {
		return bl.BulkSafe(ctx, k.db, table)
	}
	return false, nil
}

// columnHint pulls a column's definition out of a one-column CREATE TABLE,
// to suggest the ALTER TABLE a consumer needs.
func columnHint(ddl, quoted string) string {
	i := strings.Index(ddl, quoted+" ")
	if i < 0 {
		return ""
	}
	def := ddl[i:]
	depth := 0
	for j, r := range def {
		switch {
		case r == '(':
			depth++
		case r == ')' && depth == 0, (r == ',' || r == '\n') && depth == 0:
			def = def[:j]
		case r == ')':
			depth--
		}
		if len(def) == j {
			break
		}
	}
	def = strings.TrimSuffix(strings.TrimSpace(def), " NOT NULL")
	return ", e.g. ADD " + def
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// stmtBytes bounds the values one statement carries: a statement holds
// copies of its rows' values, and rows may be as large as the receiver's
// row limit, so a row count alone would not bound memory.
const stmtBytes = 8 << 20

// write applies the rows in body, in order, grouping runs of upserts and
// runs of deletes into multi-row statements.
func (k *sink) write(ctx context.Context, tx *sql.Tx, sch *batch.Schema, body io.Reader) error {
	rr := batch.NewRowReader(body, sch)
	perStmt := k.d.UpsertRows(len(sch.Columns))
	keyIdx := sch.KeyIndex()
	var keyCols []batch.Column
	for _, i := range keyIdx {
		keyCols = append(keyCols, sch.Columns[i])
	}
	var args []any
	var rows, held int
	var op byte
	flush := func() error {
		held = 0
		if rows == 0 {
			return nil
		}
		var q string
		if op == batch.RowUpsert {
			q = k.upsertSQL(k.cfg.Table, sch, rows)
		} else {
			q = k.deleteSQL(keyCols, rows)
		}
		_, err := tx.ExecContext(ctx, q, args...)
		args, rows = args[:0], 0
		return err
	}
	for {
		r, err := rr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		size := 0
		for _, v := range r.Values {
			size += len(v)
		}
		if r.Op != op || (op == batch.RowUpsert && rows >= perStmt) || (op == batch.RowDelete && rows >= deleteKeys) || held+size > stmtBytes {
			if err := flush(); err != nil {
				return err
			}
			op = r.Op
		}
		cols := sch.Columns
		if r.Op == batch.RowDelete {
			cols = keyCols
		}
		for i, v := range r.Values {
			if (cols[i].Type == batch.TypeString || cols[i].Type == batch.TypeText) && !utf8.Valid(v) {
				return fmt.Errorf("column %s: a value is not valid UTF-8", cols[i].Name)
			}
			args = append(args, bindValue(&cols[i], v))
		}
		held += size
		rows++
	}
	return flush()
}

// bindValue is the argument for one canonical value: bytes for binary
// types, text for the rest, nil for NULL.
func bindValue(c *batch.Column, v []byte) any {
	switch {
	case v == nil:
		return nil
	case c.Type == batch.TypeBinary || c.Type == batch.TypeBlob:
		return slices.Clone(v)
	}
	return string(v)
}

func (k *sink) upsertSQL(table string, sch *batch.Schema, rows int) string {
	return k.d.Upsert(table, sch.Columns, sch.Key, rows)
}

func (k *sink) deleteSQL(key []batch.Column, rows int) string {
	p := params{d: k.d}
	var b strings.Builder
	b.WriteString("DELETE FROM " + k.d.Quote(k.cfg.Table) + " WHERE ")
	if len(key) == 1 {
		b.WriteString(k.d.Quote(key[0].Name) + " IN (")
		for i := range rows {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(k.d.Bind(key[0], p.next()))
		}
		b.WriteString(")")
		return b.String()
	}
	for i := range rows {
		if i > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString("(")
		for j, c := range key {
			if j > 0 {
				b.WriteString(" AND ")
			}
			b.WriteString(k.d.Quote(c.Name) + " = " + k.d.Bind(c, p.next()))
		}
		b.WriteString(")")
	}
	return b.String()
}

// Destroy deletes every row of the target table, which holds this one
// resource, and the grant's applied record, in one transaction.
func (k *sink) Destroy(ctx context.Context, grant string, _ connectors.State, _ *connectors.Changes) (string, error) {
	if _, err := k.d.Describe(ctx, k.db, k.cfg.Table); errors.Is(err, ErrNoTable) {
		return fmt.Sprintf("nothing: table %s was never created", k.cfg.Table), nil
	}
	tx, err := k.d.BeginApply(ctx, k.db)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "DELETE FROM "+k.d.Quote(k.cfg.Table))
	if err != nil {
		return "", fmt.Errorf("destroy the rows of %s: %w", k.cfg.Table, err)
	}
	n, _ := res.RowsAffected()
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+k.d.Quote(k.cfg.AppliedTable)+" WHERE "+k.d.Quote("grant_id")+" = "+k.d.Param(1), grant); err != nil {
		return "", err
	}
	if _, err := k.d.Describe(ctx, k.db, k.partsTable()); err == nil {
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+k.d.Quote(k.partsTable())+" WHERE "+k.d.Quote("grant_id")+" = "+k.d.Param(1), grant); err != nil {
			return "", err
		}
	}
	if err := tx.Commit(); err != nil {
		return "", err
	}
	k.forget()
	return fmt.Sprintf("%d rows of table %s deleted", n, k.cfg.Table), nil
}
