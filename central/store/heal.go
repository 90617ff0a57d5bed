package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/bits"
)

// A stored batch found damaged when its consumer rejected it is dropped
// and its provider asked to send it again, under the same sequence number
// (docs/protocol.md, "Damaged batches").
var healSchema = []string{
	// Re-sends the hub asked a provider for: one row per batch until a copy
	// of it is stored again.
	`CREATE TABLE IF NOT EXISTS resends (
		grant_id TEXT NOT NULL REFERENCES grants(id),
		seq INTEGER NOT NULL,
		requested TEXT NOT NULL,
		reason TEXT NOT NULL,
		PRIMARY KEY (grant_id, seq)
	)`,
	// Rejections of one stored copy (by its digest), counted so that the
	// audit log and the hub's re-checks grow with their logarithm only.
	`CREATE TABLE IF NOT EXISTS batch_rejections (
		grant_id TEXT NOT NULL REFERENCES grants(id),
		seq INTEGER NOT NULL,
		digest TEXT NOT NULL,
		count INTEGER NOT NULL,
		PRIMARY KEY (grant_id, seq, digest)
	)`,
}

// NoteRejection counts a consumer's rejection of a stored batch copy and
// returns how many there were, this one included. The first rejection and
// every one whose count is a power of two is audited (delivery.reject,
// with the count), so n rejections of one copy write 1+log2(n) records.
func (s *SQLite) NoteRejection(ctx context.Context, consumer string, b Batch, reason string) (int, error) {
	var n int
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO batch_rejections (grant_id, seq, digest, count) VALUES (?, ?, ?, 1)
			ON CONFLICT (grant_id, seq, digest) DO UPDATE SET count = count + 1 RETURNING count`, b.Grant, b.Sequence, b.Digest).Scan(&n)
		if err != nil {
			return err
		}
		if bits.OnesCount(uint(n)) != 1 {
			return nil
		}
		detail := reason
		if n > 1 {
			detail = fmt.Sprintf("%s (rejection %d of this copy)", reason, n)
		}
		return s.audit(ctx, tx, consumer, "delivery.reject", fmt.Sprintf("%s/%d", b.Grant, b.Sequence), detail)
	})
	return n, err
}

// DropDamaged forgets a stored batch whose payload failed the hub's own
// check and asks its provider to send it again, with one audit record
// (batch.damage). A batch already receipted, or stored again meanwhile
// with another digest, is left alone (ErrConflict). The caller deletes the
// payload file after.
func (s *SQLite) DropDamaged(ctx context.Context, b Batch, reason string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM batches WHERE grant_id = ? AND seq = ? AND digest = ? AND receipted = ''`, b.Grant, b.Sequence, b.Digest)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("batch %s/%d is receipted or was stored again: %w", b.Grant, b.Sequence, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM batch_rejections WHERE grant_id = ? AND seq = ?`, b.Grant, b.Sequence); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO resends (grant_id, seq, requested, reason) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			b.Grant, b.Sequence, ts(s.now()), reason); err != nil {
			return err
		}
		return s.audit(ctx, tx, "hub", "batch.damage", fmt.Sprintf("%s/%d", b.Grant, b.Sequence),
			fmt.Sprintf("the stored copy (digest %s) failed the hub's check after its consumer rejected it: %s; the provider is asked to send it again", b.Digest, reason))
	})
}

// Resends lists the batches of a grant the hub asked its provider to send
// again and has not stored since, in sequence order. Requests a stored
// batch answered are removed.
func (s *SQLite) Resends(ctx context.Context, grant string) ([]uint64, error) {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM resends WHERE grant_id = ? AND EXISTS (SELECT 1 FROM batches b WHERE b.grant_id = resends.grant_id AND b.seq = resends.seq)`, grant); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq FROM resends WHERE grant_id = ? ORDER BY seq LIMIT 1000`, grant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var seq uint64
		if err := rows.Scan(&seq); err != nil {
			return nil, err
		}
		out = append(out, seq)
	}
	return out, rows.Err()
}

// LastReceipt returns the receipted batch of a grant with the highest
// sequence number (ErrNotFound if none is receipted yet). The consumer
// applies in sequence order, so its receipt covers every batch before it.
func (s *SQLite) LastReceipt(ctx context.Context, grant string) (Batch, error) {
	b, err := scanBatch(s.db.QueryRowContext(ctx, `SELECT `+batchCols+` FROM batches WHERE grant_id = ? AND receipted != '' ORDER BY seq DESC LIMIT 1`, grant))
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("grant %s has no receipt yet: %w", grant, ErrNotFound)
	}
	return b, err
}
