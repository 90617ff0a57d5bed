package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/qianzhi/qianzhi/pkg/anchor"
)

// The hub's own copy of the audit checkpoints it signed (central/checkpoint.go).
// The newest tells a starting hub whether its log was cut; the others are
// what agents that were away fetch, and what audit checkpoints --export
// writes. Kept: the newest of each hour (UTC) and the last KeepRecent, so a
// year of activity holds at most ~8,800 rows.
var checkpointSchema = []string{
	`CREATE TABLE IF NOT EXISTS audit_checkpoints (seq INTEGER PRIMARY KEY, at TEXT NOT NULL, body BLOB NOT NULL)`,
}

// KeepRecent is how many of the newest checkpoints are kept whatever their
// hour.
const KeepRecent = 100

// pruneCheckpoints thins the table to the newest checkpoint of each hour
// (at is RFC 3339 UTC text: its first 13 characters name the hour) and the
// newest ? rows.
const pruneCheckpoints = `DELETE FROM audit_checkpoints
	WHERE seq NOT IN (SELECT seq FROM audit_checkpoints ORDER BY seq DESC LIMIT ?)
	AND seq NOT IN (SELECT MAX(seq) FROM audit_checkpoints GROUP BY substr(at, 1, 13))`

// AuditHead returns the number and hash of the last audit record (0 and ""
// for an empty log).
func (s *SQLite) AuditHead(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := s.db.QueryRowContext(ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	return seq, hash, err
}

// AuditRecordHash returns the chain hash of record seq.
func (s *SQLite) AuditRecordHash(ctx context.Context, seq int64) (string, error) {
	var hash string
	err := s.db.QueryRowContext(ctx, `SELECT hash FROM audit WHERE seq = ?`, seq).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("audit record %d: %w", seq, ErrNotFound)
	}
	return hash, err
}

// PutCheckpoint keeps a signed checkpoint (a second one for the same record
// changes nothing) and thins the older ones.
func (s *SQLite) PutCheckpoint(ctx context.Context, c anchor.Checkpoint) error {
	body, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, at, body) VALUES (?, ?, ?) ON CONFLICT (seq) DO NOTHING`, c.Seq, ts(c.At), body); err != nil {
			return fmt.Errorf("store audit checkpoint: %w", err)
		}
		if _, err := tx.ExecContext(ctx, pruneCheckpoints, KeepRecent); err != nil {
			return fmt.Errorf("thin audit checkpoints: %w", err)
		}
		return nil
	})
}

// Checkpoints returns the newest limit checkpoints of records after seq
// (every one for limit <= 0), oldest first.
func (s *SQLite) Checkpoints(ctx context.Context, after int64, limit int) ([]anchor.Checkpoint, error) {
	if limit <= 0 {
		limit = math.MaxInt32
	}
	rows, err := s.db.QueryContext(ctx, `SELECT body FROM audit_checkpoints WHERE seq > ? ORDER BY seq DESC LIMIT ?`, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []anchor.Checkpoint
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			return nil, err
		}
		var c anchor.Checkpoint
		if err := json.Unmarshal(body, &c); err != nil {
			return nil, fmt.Errorf("audit checkpoint in the database: %w", err)
		}
		out = append(out, c)
	}
	slices.Reverse(out)
	return out, rows.Err()
}

// DropCheckpoints deletes the hub's checkpoints of the given records and,
// in the same transaction, appends the audit record (action audit.cut)
// that says so: an operator accepting that the log lost what they signed.
func (s *SQLite) DropCheckpoints(ctx context.Context, seqs []int64, subject, detail string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, seq := range seqs {
			if _, err := tx.ExecContext(ctx, `DELETE FROM audit_checkpoints WHERE seq = ?`, seq); err != nil {
				return fmt.Errorf("drop audit checkpoint %d: %w", seq, err)
			}
		}
		return s.audit(ctx, tx, Actor(ctx), "audit.cut", subject, detail)
	})
}
