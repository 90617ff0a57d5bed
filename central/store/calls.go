package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

var callsSchema = []string{
	// One row per query or verify call, whatever became of it. The
	// parameters and the answer are never stored: only the provider's
	// signed receipt, which holds their digests (keyed, in a version 2
	// receipt, with a key the hub never has: see receipt.CallKeyer).
	`CREATE TABLE IF NOT EXISTS calls (
		id TEXT PRIMARY KEY,
		grant_id TEXT NOT NULL DEFAULT '',
		resource TEXT NOT NULL,
		call TEXT NOT NULL,
		mode TEXT NOT NULL,
		provider TEXT NOT NULL DEFAULT '',
		consumer TEXT NOT NULL,
		asked TEXT NOT NULL,
		status TEXT NOT NULL,
		reason TEXT NOT NULL DEFAULT '',
		took_ms REAL NOT NULL DEFAULT 0,
		receipt BLOB
	)`,
	`CREATE INDEX IF NOT EXISTS calls_consumer ON calls(consumer, asked)`,
	`CREATE INDEX IF NOT EXISTS calls_provider ON calls(provider, asked)`,
	`CREATE INDEX IF NOT EXISTS calls_grant ON calls(grant_id, asked)`,
}

// callTime formats a call's time at a fixed width, so that the text sorts
// and compares as the time does (RFC 3339 with trimmed fractions does not).
const callTime = "2006-01-02T15:04:05.000000000Z"

func callTS(t time.Time) string { return t.UTC().Format(callTime) }

// RecordCalls writes call records and one audit record each, in one
// transaction: the hub gathers the calls that end together and commits
// them at once, since a commit waits for the disk. Each audit record names
// the consumer as the actor and the call ID as the subject; its detail
// names the grant, resource, call, both nodes, the status and the reason,
// never the parameters or the answer.
func (s *SQLite) RecordCalls(ctx context.Context, recs []api.CallRecord) error {
	if len(recs) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO calls (id, grant_id, resource, call, mode, provider, consumer, asked, status, reason, took_ms, receipt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		audit, err := s.auditChain(ctx, tx)
		if err != nil {
			return err
		}
		for _, r := range recs {
			var rc []byte
			if len(r.Receipt) > 0 {
				rc = r.Receipt
			}
			if _, err := ins.ExecContext(ctx, r.ID, r.Grant, r.Resource, r.Call, r.Mode, r.Provider, r.Consumer, callTS(r.Asked), r.Status, r.Reason, r.TookMS, rc); err != nil {
				return fmt.Errorf("record call %s: %w", r.ID, err)
			}
			detail := fmt.Sprintf("grant=%s resource=%s call=%s mode=%s consumer=%s provider=%s status=%s took_ms=%.1f", r.Grant, r.Resource, r.Call, r.Mode, r.Consumer, r.Provider, r.Status, r.TookMS)
			if r.Reason != "" {
				detail += " reason=" + r.Reason
			}
			if err := audit(r.Consumer, CallAction(r), r.ID, detail); err != nil {
				return err
			}
		}
		return nil
	})
}

// CallAction is the audit action of a call record: call.query or
// call.verify for an answered call, else call.refused, call.failed or
// call.timeout.
func CallAction(r api.CallRecord) string {
	if r.Status == api.CallAnswered {
		return "call." + r.Mode
	}
	return "call." + r.Status
}

// auditChain returns a function that appends audit records within tx,
// reading the chain's head once rather than once a record.
func (s *SQLite) auditChain(ctx context.Context, tx *sql.Tx) (func(actor, action, subject, detail string) error, error) {
	var prev string
	var last int64
	err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&last, &prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	ins, err := tx.PrepareContext(ctx, `INSERT INTO audit (seq, at, actor, action, subject, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, err
	}
	return func(actor, action, subject, detail string) error {
		r := AuditRecord{Seq: last + 1, At: s.now(), Actor: actor, Action: action, Subject: subject, Detail: detail, Prev: prev}
		r.Hash = AuditHash(r)
		if _, err := ins.ExecContext(ctx, r.Seq, ts(r.At), r.Actor, r.Action, r.Subject, r.Detail, r.Prev, r.Hash); err != nil {
			return err
		}
		last, prev = r.Seq, r.Hash
		return nil
	}, nil
}

const callCols = `id, grant_id, resource, call, mode, provider, consumer, asked, status, reason, took_ms, receipt`

// Calls lists call records newest first, at most limit of them: those a
// node made or answered (node "" for every node), of one grant when grant
// is not "".
func (s *SQLite) Calls(ctx context.Context, node, grant string, limit int) ([]api.CallRecord, error) {
	if limit <= 0 {
		limit = 100
	}
	var q string
	var args []any
	switch {
	case grant != "" && node != "":
		q, args = `SELECT `+callCols+` FROM calls WHERE grant_id = ? AND (consumer = ? OR provider = ?) ORDER BY asked DESC, id DESC LIMIT ?`, []any{grant, node, node, limit}
	case grant != "":
		q, args = `SELECT `+callCols+` FROM calls WHERE grant_id = ? ORDER BY asked DESC, id DESC LIMIT ?`, []any{grant, limit}
	case node != "":
		// Each side by its own index, then merged: an OR would sort the
		// node's whole history.
		q = `SELECT ` + callCols + ` FROM (
			SELECT * FROM (SELECT ` + callCols + ` FROM calls WHERE consumer = ? ORDER BY asked DESC LIMIT ?)
			UNION ALL
			SELECT * FROM (SELECT ` + callCols + ` FROM calls WHERE provider = ? AND consumer <> ? ORDER BY asked DESC LIMIT ?)
		) ORDER BY asked DESC, id DESC LIMIT ?`
		args = []any{node, limit, node, node, limit, limit}
	default:
		q, args = `SELECT `+callCols+` FROM calls ORDER BY asked DESC, id DESC LIMIT ?`, []any{limit}
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.CallRecord
	for rows.Next() {
		var r api.CallRecord
		var asked string
		var rc []byte
		if err := rows.Scan(&r.ID, &r.Grant, &r.Resource, &r.Call, &r.Mode, &r.Provider, &r.Consumer, &asked, &r.Status, &r.Reason, &r.TookMS, &rc); err != nil {
			return nil, err
		}
		r.Asked = parseTS(asked)
		if len(rc) > 0 {
			r.Receipt = rc
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// CallCount counts a grant's calls asked since a time that count against
// its daily quota: every call that passed the hub's checks, whatever the
// provider made of it (answered, failed, timed out, or not connected).
// Calls the hub refused (no grant, bad parameters, over the rate or the
// quota) do not count.
func (s *SQLite) CallCount(ctx context.Context, grant string, since time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM calls WHERE grant_id = ? AND asked >= ? AND status <> ?`, grant, callTS(since), api.CallRefused).Scan(&n)
	return n, err
}
