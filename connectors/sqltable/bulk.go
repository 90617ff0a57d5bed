package sqltable

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Snapshot batches (a first copy, a full copy) are upserts of distinct keys,
// so their rows may be loaded in any order. Where the dialect can bulk load
// (BulkLoader) and the target's only unique index is the key, they are: in
// the batch's transaction, or — with parallel > 1 and enough rows — in
// parts over several connections at once, each part in its own transaction
// with its (grant, sequence, part) record in the parts table. A crash
// between parts leaves those committed recorded; the batch applied again
// loads only the others. The applied table moves once every part is in.
// Readers may see part of a snapshot batch meanwhile, as they see part of
// the snapshot between batches.

// minPartRows is the fewest rows worth a part of their own.
const minPartRows = 2000

// partBase encodes a part record: parts*partBase + part.
const partBase = 100

// partsSchema records the parts of a snapshot batch already loaded.
var partsSchema = func() *batch.Schema {
	s := &batch.Schema{Columns: []batch.Column{
		{Name: "grant_id", Type: batch.TypeString, Length: 128},
		{Name: "seq", Type: batch.TypeInt},
		{Name: "part", Type: batch.TypeInt},
	}, Key: []string{"grant_id", "seq", "part"}}
	s.Fingerprint = batch.SchemaFingerprint(s.Columns, s.Key)
	return s
}()

func (k *sink) partsTable() string { return k.cfg.AppliedTable + "_parts" }

func (k *sink) bulkAllowed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.bulk && !k.refused
}

// bulkLoader returns the dialect's bulk loader when a batch may use it.
func (k *sink) bulkLoader(sch *batch.Schema) (BulkLoader, bool) {
	bl, ok := k.d.(BulkLoader)
	return bl, ok && sch.Phase == "snapshot" && k.bulkAllowed()
}

// refuseBulk notes that bulk loads do not work here.
func (k *sink) refuseBulk(err error) {
	k.mu.Lock()
	k.refused = true
	k.mu.Unlock()
	k.log.Warn("bulk load refused or not exact; applying with INSERT statements from now on, which are slower (if local_infile is off: SET GLOBAL local_infile = 1)", "err", err)
}

// row is one row of a batch on its way to a loader.
type row struct {
	op   byte
	vals [][]byte
}

// bulkRows loads rows (upserts streamed, then the deletes) inside tx.
func (k *sink) bulkRows(ctx context.Context, bl BulkLoader, tx *sql.Tx, sch *batch.Schema, next func() (row, error)) error {
	var dels [][]byte
	up := func() ([][]byte, error) {
		for {
			r, err := next()
			if err != nil {
				return nil, err
			}
			if r.op == batch.RowDelete {
				for _, v := range r.vals {
					dels = append(dels, slices.Clone(v))
				}
				continue
			}
			for i, v := range r.vals {
				if c := &sch.Columns[i]; (c.Type == batch.TypeString || c.Type == batch.TypeText) && !utf8.Valid(v) {
					return nil, fmt.Errorf("column %s: a value is not valid UTF-8", c.Name)
				}
			}
			return r.vals, nil
		}
	}
	if err := bl.BulkUpsert(ctx, tx, k.cfg.Table, sch.Columns, up); err != nil {
		return err
	}
	var keyCols []batch.Column
	for _, i := range sch.KeyIndex() {
		keyCols = append(keyCols, sch.Columns[i])
	}
	per := len(keyCols)
	for len(dels) > 0 {
		n := min(len(dels)/per, deleteKeys)
		args := make([]any, 0, n*per)
		for i := range n * per {
			args = append(args, bindValue(&keyCols[i%per], dels[i]))
		}
		if _, err := tx.ExecContext(ctx, k.deleteSQL(keyCols, n), args...); err != nil {
			return err
		}
		dels = dels[n*per:]
	}
	return nil
}

// writeBulk loads a snapshot batch inside the batch's own transaction.
func (k *sink) writeBulk(ctx context.Context, bl BulkLoader, tx *sql.Tx, sch *batch.Schema, body io.Reader) error {
	rr := batch.NewRowReader(body, sch)
	return k.bulkRows(ctx, bl, tx, sch, func() (row, error) {
		r, err := rr.Next()
		if err != nil {
			return row{}, err
		}
		return row{r.Op, r.Values}, nil
	})
}

// applyParts loads a snapshot batch in parts over parallel connections,
// then records it applied.
func (k *sink) applyParts(ctx context.Context, bl BulkLoader, h *batch.Header, body io.Reader) error {
	sch := h.Schema
	var seq int64
	err := k.db.QueryRowContext(ctx, "SELECT "+k.d.Quote("seq")+" FROM "+k.d.Quote(k.cfg.AppliedTable)+" WHERE "+k.d.Quote("grant_id")+" = "+k.d.Param(1), h.Grant).Scan(&seq)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read %s: %w", k.cfg.AppliedTable, err)
	}
	if seq >= int64(h.Sequence) {
		k.log.Info("batch was applied before; nothing to do", "grant", h.Grant, "seq", h.Sequence)
		return nil
	}
	if err := k.ensureParts(ctx); err != nil {
		return err
	}
	done := map[int64]bool{}
	p := k.d.Param
	rows, err := k.db.QueryContext(ctx, "SELECT "+k.d.Quote("part")+" FROM "+k.d.Quote(k.partsTable())+" WHERE "+k.d.Quote("grant_id")+" = "+p(1)+" AND "+k.d.Quote("seq")+" = "+p(2), h.Grant, h.Sequence)
	if err != nil {
		return fmt.Errorf("read %s: %w", k.partsTable(), err)
	}
	parts := int64(min(k.cfg.Parallel, int(h.Rows/minPartRows)))
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		// A record is part i of parts (stored as parts*partBase + i).
		// Records made with another part count (parallel changed before
		// a crash) name other rows: their rows are loaded again, which
		// REPLACE makes harmless.
		if n/partBase == parts {
			done[n%partBase] = true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	chans := make([]chan row, parts)
	for i := range parts {
		if done[i] {
			continue // loaded before a crash
		}
		ch := make(chan row, 256)
		chans[i] = ch
		g.Go(func() error {
			tx, err := k.d.BeginApply(gctx, k.db)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			err = k.bulkRows(gctx, bl, tx, sch, func() (row, error) {
				select {
				case r, ok := <-ch:
					if !ok {
						return row{}, io.EOF
					}
					return r, nil
				case <-gctx.Done():
					return row{}, gctx.Err()
				}
			})
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(gctx, k.upsertSQL(k.partsTable(), partsSchema, 1), h.Grant, fmt.Sprint(h.Sequence), fmt.Sprint(parts*partBase+i)); err != nil {
				return fmt.Errorf("record part %d of batch %d: %w", i, h.Sequence, err)
			}
			return tx.Commit()
		})
	}
	g.Go(func() error {
		defer func() {
			for _, ch := range chans {
				if ch != nil {
					close(ch)
				}
			}
		}()
		rr := batch.NewRowReader(body, sch)
		for i := int64(0); ; i++ {
			r, err := rr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			ch := chans[min(parts-1, i*parts/max(h.Rows, 1))]
			if ch == nil {
				continue
			}
			// One allocation for the row's bytes (the reader reuses its
			// buffer); nil stays nil, and an empty value stays empty.
			size := 0
			for _, v := range r.Values {
				size += len(v)
			}
			buf := make([]byte, 0, size)
			vals := make([][]byte, len(r.Values))
			for j, v := range r.Values {
				if v != nil {
					at := len(buf)
					buf = append(buf, v...)
					vals[j] = buf[at:len(buf):len(buf)]
				}
			}
			select {
			case ch <- row{r.Op, vals}:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
	})
	if err := g.Wait(); err != nil {
		return err
	}
	tx, err := k.d.BeginApply(ctx, k.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	rec := []any{h.Grant, h.Resource, fmt.Sprint(h.Sequence), time.Now().UTC().Format(time.RFC3339Nano)}
	if _, err := tx.ExecContext(ctx, k.upsertSQL(k.cfg.AppliedTable, appliedSchema, 1), rec...); err != nil {
		return fmt.Errorf("record batch %d in %s: %w", h.Sequence, k.cfg.AppliedTable, err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+k.d.Quote(k.partsTable())+" WHERE "+k.d.Quote("grant_id")+" = "+p(1), h.Grant); err != nil {
		return err
	}
	return tx.Commit()
}

// ensureParts creates the parts table once.
func (k *sink) ensureParts(ctx context.Context) error {
	k.mu.Lock()
	ok := k.parts
	k.mu.Unlock()
	if ok {
		return nil
	}
	if _, err := k.ensureTable(ctx, k.partsTable(), partsSchema, true); err != nil {
		return err
	}
	k.mu.Lock()
	k.parts = true
	k.mu.Unlock()
	return nil
}
