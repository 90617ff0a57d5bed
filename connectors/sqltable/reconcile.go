package sqltable

import (
	"context"
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Reconciliation repairs what watermarks cannot see — rows deleted outright,
// rows changed behind the application's back — without log capture:
//
//  1. `qz-agent reconcile RESOURCE` sets KeyReconcileRequest in each of the
//     resource's grant states.
//  2. The source answers with a digest batch: for every bucket of rows
//     (rows are put in buckets by a hash of their key), the row count and
//     the sum of the rows' hashes. The agent notes the batch's sequence in
//     KeyReconcileWait.
//  3. The consumer computes the same over its own table and names the
//     buckets that differ in its signed receipt.
//  4. The provider's agent reads the receipt and stores those buckets in
//     KeyReconcileDiff; the source then sends every row of them, a few
//     buckets a batch, and the consumer deletes its rows of those buckets
//     that the batch lacks.
//
// Only the differing buckets travel. Buckets by key hash, not key ranges,
// because two engines (or two collations) may order the same keys
// differently, and a range would then not hold the same rows on both sides.
const (
	KeyReconcileRequest = "rc_req"  // set by the CLI: start a reconciliation
	KeyReconcileWait    = "rc_wait" // the digest batch's sequence, until its receipt arrives
	KeyReconcileDiff    = "rc_diff" // JSON []int: buckets still to send
	keyReconcilePlan    = "rc_plan" // JSON plan: bucket count and buckets per batch
	// KeyVerifyRequest, set by qz-agent verify, asks for a digest that the
	// consumer only compares (batch.Reconcile.Verify).
	KeyVerifyRequest = connectors.KeyVerifyRequest
)

type plan struct {
	Buckets int `json:"buckets"`
	Group   int `json:"group"` // buckets per replace batch
}

// reconcileStep runs the next step of a reconciliation, if one is due. It
// reports whether it filled out.
func (s *source) reconcileStep(ctx context.Context, st connectors.State, sh *shape, out *connectors.Output) (bool, error) {
	diff, ok, err := st.Get(KeyReconcileDiff)
	if err != nil {
		return false, err
	}
	if ok {
		return true, s.replace(ctx, st, sh, diff, out)
	}
	if _, ok, err := st.Get(KeyVerifyRequest); err != nil {
		return false, err
	} else if ok {
		return true, s.digest(ctx, sh, out, true)
	}
	if _, ok, err := st.Get(KeyReconcileRequest); err != nil || !ok {
		return false, err
	}
	if _, waiting, err := st.Get(KeyReconcileWait); err != nil || waiting {
		return false, err
	}
	return true, s.digest(ctx, sh, out, false)
}

// scan reads every row of the table (without order), calling fn with the
// canonical values of sh.cols; soft-deleted rows are skipped, as they are
// absent at consumers.
func (s *source) scan(ctx context.Context, sh *shape, fn func(text [][]byte) error) error {
	rows, err := s.db.QueryContext(ctx, "SELECT "+s.selectList(sh)+" FROM "+sh.from)
	if err != nil {
		return err
	}
	defer rows.Close()
	return scanRows(rows, sh.cols, func(text [][]byte) error {
		if s.deleted(sh, text) {
			return nil
		}
		return fn(text)
	})
}

// rowScanner is what *sql.Rows offers.
type rowScanner interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// scanRows converts every row to canonical text and calls fn; the slices
// are reused between calls.
func scanRows(rows rowScanner, cols []batch.Column, fn func(text [][]byte) error) error {
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	text := make([][]byte, len(cols))
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		for i := range cols {
			t, err := ToText(&cols[i], vals[i])
			if err != nil {
				return err
			}
			text[i] = t
		}
		if err := fn(text); err != nil {
			return err
		}
	}
	return rows.Err()
}

// digester accumulates per-bucket counts and sums.
type digester struct {
	cols    []batch.Column
	keyIdx  []int
	keyCols []batch.Column
	counts  []int64
	sums    []uint64
	key     [][]byte
}

func newDigester(cols []batch.Column, key []string, buckets int) *digester {
	d := &digester{cols: cols, counts: make([]int64, buckets), sums: make([]uint64, buckets)}
	for _, k := range key {
		i := slices.IndexFunc(cols, func(c batch.Column) bool { return c.Name == k })
		d.keyIdx = append(d.keyIdx, i)
		d.keyCols = append(d.keyCols, cols[i])
	}
	d.key = make([][]byte, len(key))
	return d
}

func (d *digester) bucket(vals [][]byte) int {
	for j, i := range d.keyIdx {
		d.key[j] = vals[i]
	}
	return batch.KeyBucket(d.key, d.keyCols, len(d.counts))
}

func (d *digester) add(vals [][]byte) {
	b := d.bucket(vals)
	d.counts[b]++
	d.sums[b] += batch.RowSum(vals, d.cols)
}

func (d *digester) hexSums() []string {
	out := make([]string, len(d.sums))
	for i, v := range d.sums {
		out[i] = fmt.Sprintf("%016x", v)
	}
	return out
}

// digest sends the provider's count and sum of every bucket.
func (s *source) digest(ctx context.Context, sh *shape, out *connectors.Output, verify bool) error {
	var n int64
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+sh.from).Scan(&n); err != nil {
		return fmt.Errorf("resource %s: reconcile: count rows: %w", s.cfg.ID, err)
	}
	// About 500 rows a bucket, a power of two between 16 and MaxBuckets.
	buckets := 1 << max(4, min(16, bits.Len64(uint64(n/500))))
	d := newDigester(sh.schema.Columns, sh.schema.Key, buckets)
	var bytes int64
	var pub [][]byte
	err := s.scan(ctx, sh, func(text [][]byte) error {
		pub = sh.publish(text, pub)
		d.add(pub)
		for _, v := range pub {
			bytes += int64(len(v)) + 2
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("resource %s: reconcile: %w", s.cfg.ID, err)
	}
	perBatch := int64(out.Limit)
	group := 1
	if bytes > 0 {
		group = int(max(1, perBatch*int64(buckets)/bytes))
	}
	sch := *sh.schema
	sch.Phase = batch.PhaseDigest
	sch.Reconcile = &batch.Reconcile{Buckets: buckets, Counts: d.counts, Sums: d.hexSums(), Verify: verify}
	out.Kind, out.Schema = batch.KindRows, &sch
	if verify {
		out.Changes.Delete(KeyVerifyRequest)
		s.log.Info("verify: digest of the table sent; waiting for the consumer's comparison", "rows", n, "buckets", buckets)
		return nil
	}
	raw, _ := json.Marshal(plan{Buckets: buckets, Group: group})
	out.Changes.Put(keyReconcilePlan, raw)
	out.Changes.Delete(KeyReconcileRequest)
	s.log.Info("reconcile: digest of the table sent; waiting for the consumer's comparison", "rows", n, "buckets", buckets)
	return nil
}

// replace sends every row of the next few differing buckets.
func (s *source) replace(ctx context.Context, st connectors.State, sh *shape, diff []byte, out *connectors.Output) error {
	var todo []int
	if err := json.Unmarshal(diff, &todo); err != nil {
		return fmt.Errorf("resource %s: reconcile state: %w", s.cfg.ID, err)
	}
	var p plan
	if raw, _, err := st.Get(keyReconcilePlan); err != nil {
		return err
	} else if err := json.Unmarshal(raw, &p); err != nil || p.Buckets < 1 {
		return fmt.Errorf("resource %s: reconcile plan missing; run qz-agent reconcile again", s.cfg.ID)
	}
	todo = slices.DeleteFunc(todo, func(b int) bool { return b < 0 || b >= p.Buckets }) // a consumer's answer is not trusted blindly
	if len(todo) == 0 {
		out.Changes.Delete(KeyReconcileDiff)
		out.Changes.Delete(keyReconcilePlan)
		s.log.Info("reconcile: finished; consumer and provider agree")
		return nil
	}
	group := todo[:min(len(todo), max(1, p.Group))]
	want := map[int]bool{}
	for _, b := range group {
		want[b] = true
	}
	d := newDigester(sh.schema.Columns, sh.schema.Key, p.Buckets)
	var w batch.RowWriter
	var pub [][]byte
	err := s.scan(ctx, sh, func(text [][]byte) error {
		pub = sh.publish(text, pub)
		if want[d.bucket(pub)] {
			w.Upsert(pub)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("resource %s: reconcile: %w", s.cfg.ID, err)
	}
	rest, _ := json.Marshal(todo[len(group):])
	out.Changes.Put(KeyReconcileDiff, rest)
	sch := *sh.schema
	sch.Phase = batch.PhaseReplace
	sch.Reconcile = &batch.Reconcile{Buckets: p.Buckets, Replace: slices.Clone(group)}
	s.fill(out, sh, &w)
	out.Schema = &sch
	s.log.Info("reconcile: resending differing buckets", "buckets", len(group), "rows", w.Rows(), "left", len(todo)-len(group))
	return nil
}

// compare computes the consumer's digest of its table for the provider's
// buckets and returns the buckets that differ.
func (k *sink) compare(ctx context.Context, sch *batch.Schema) ([]int, error) {
	rc := sch.Reconcile
	cols, err := k.targetColumns(ctx, sch)
	if err != nil {
		return nil, err
	}
	d := newDigester(cols, sch.Key, rc.Buckets)
	rows, err := k.db.QueryContext(ctx, "SELECT "+k.selectList(cols)+" FROM "+k.d.Quote(k.cfg.Table))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	if err := scanRows(rows, cols, func(text [][]byte) error { d.add(text); return nil }); err != nil {
		return nil, err
	}
	var diff []int
	for b := range rc.Buckets {
		if d.counts[b] != rc.Counts[b] || fmt.Sprintf("%016x", d.sums[b]) != rc.Sums[b] {
			diff = append(diff, b)
		}
	}
	return diff, nil
}

// targetColumns are the batch's columns as the target table types them, so
// that they are read back in the target's own canonical form.
func (k *sink) targetColumns(ctx context.Context, sch *batch.Schema) ([]batch.Column, error) {
	t, err := k.d.Describe(ctx, k.db, k.cfg.Table)
	if err != nil {
		return nil, err
	}
	var cols []batch.Column
	for _, c := range sch.Columns {
		i := slices.IndexFunc(t.Columns, func(x batch.Column) bool { return x.Name == c.Name })
		if i < 0 {
			return nil, fmt.Errorf("target table %s has no column %s", k.cfg.Table, c.Name)
		}
		tc := t.Columns[i]
		tc.Type = comparable(c.Type, tc.Type)
		cols = append(cols, tc)
	}
	return cols, nil
}

// comparable picks the type under which a target value is normalised: the
// provider's where the target keeps the same text in a wider type (a
// timestamp with zone kept as text, a decimal kept as text).
func comparable(provider, target string) string {
	switch target {
	case batch.TypeString, batch.TypeText:
		return provider
	}
	return target
}

func (k *sink) selectList(cols []batch.Column) string {
	var q []string
	for _, c := range cols {
		q = append(q, k.d.Select(c, k.d.Quote(c.Name)))
	}
	return strings.Join(q, ", ")
}

// dropBuckets deletes the target's rows in the buckets a replace batch
// carries whole.
func (k *sink) dropBuckets(ctx context.Context, tx Querier, sch *batch.Schema) error {
	rc := sch.Reconcile
	want := map[int]bool{}
	for _, b := range rc.Replace {
		want[b] = true
	}
	cols, err := k.targetColumns(ctx, sch)
	if err != nil {
		return err
	}
	var keyCols []batch.Column
	for _, n := range sch.Key {
		keyCols = append(keyCols, cols[slices.IndexFunc(cols, func(c batch.Column) bool { return c.Name == n })])
	}
	d := newDigester(keyCols, sch.Key, rc.Buckets)
	rows, err := tx.QueryContext(ctx, "SELECT "+k.selectList(keyCols)+" FROM "+k.d.Quote(k.cfg.Table))
	if err != nil {
		return err
	}
	var gone [][][]byte
	err = scanRows(rows, keyCols, func(text [][]byte) error {
		if want[d.bucket(text)] {
			gone = append(gone, slices.Clone(text))
		}
		return nil
	})
	rows.Close()
	if err != nil {
		return err
	}
	for len(gone) > 0 {
		n := min(len(gone), deleteKeys)
		var args []any
		for _, key := range gone[:n] {
			for i, v := range key {
				args = append(args, bindValue(&keyCols[i], slices.Clone(v)))
			}
		}
		if _, err := tx.ExecContext(ctx, k.deleteSQL(keyCols, n), args...); err != nil {
			return err
		}
		gone = gone[n:]
	}
	return nil
}
