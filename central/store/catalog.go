package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// Catalog review statuses.
const (
	CatalogPending  = "pending"
	CatalogApproved = "approved"
	CatalogRejected = "rejected"
	// CatalogSuperseded is a pending version replaced by a newer one
	// before its review.
	CatalogSuperseded = "superseded"
)

var catalogSchema = []string{
	`CREATE TABLE IF NOT EXISTS catalog (
		resource TEXT NOT NULL REFERENCES resources(id),
		version INTEGER NOT NULL,
		provider TEXT NOT NULL,
		entry TEXT NOT NULL,
		hash TEXT NOT NULL,
		status TEXT NOT NULL,
		reason TEXT NOT NULL DEFAULT '',
		submitted TEXT NOT NULL,
		deadline TEXT NOT NULL,
		decided TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (resource, version)
	)`,
}

// SubmitCatalog records a provider's catalog entry as a new version for
// review, unless it equals the newest version. A pending version not yet
// reviewed is replaced by the newer one, its deadline kept.
func (s *SQLite) SubmitCatalog(ctx context.Context, provider string, e api.CatalogEntry, deadline time.Time) (int, bool, error) {
	raw, err := json.Marshal(e)
	if err != nil {
		return 0, false, err
	}
	hash := e.Hash()
	var version int
	changed := false
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var owner string
		if err := tx.QueryRowContext(ctx, `SELECT provider FROM resources WHERE id = ?`, e.Resource).Scan(&owner); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("resource %s: %w", e.Resource, ErrNotFound)
			}
			return err
		}
		if owner != provider {
			return fmt.Errorf("resource %s belongs to node %s: %w", e.Resource, owner, ErrConflict)
		}
		var last int
		var lastHash, lastStatus, lastDeadline string
		err := tx.QueryRowContext(ctx, `SELECT version, hash, status, deadline FROM catalog WHERE resource = ? ORDER BY version DESC LIMIT 1`, e.Resource).
			Scan(&last, &lastHash, &lastStatus, &lastDeadline)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if lastHash == hash {
			version = last
			return nil
		}
		changed = true
		if lastStatus == CatalogPending {
			// A reviewer may be reading that version: it is never changed
			// under them. It is set aside; the new one waits instead, with
			// the same deadline.
			if _, err := tx.ExecContext(ctx, `UPDATE catalog SET status = ? WHERE resource = ? AND version = ?`, CatalogSuperseded, e.Resource, last); err != nil {
				return err
			}
			if dl := parseTS(lastDeadline); !dl.IsZero() {
				deadline = dl
			}
		}
		version = last + 1
		if _, err := tx.ExecContext(ctx, `INSERT INTO catalog (resource, version, provider, entry, hash, status, submitted, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			e.Resource, version, provider, string(raw), hash, CatalogPending, ts(s.now()), ts(deadline)); err != nil {
			return err
		}
		return s.audit(ctx, tx, provider, "catalog.submit", e.Resource, fmt.Sprintf("version=%d name=%s category=%s", version, e.Name, e.Category))
	})
	return version, changed, err
}

// ReviewCatalog approves or rejects (with a reason) the pending version of
// a resource's entry; version must name it, so that a reviewer decides on
// the version they read.
func (s *SQLite) ReviewCatalog(ctx context.Context, resource string, version int, approve bool, reason, actor string) (api.CatalogVersion, error) {
	var v api.CatalogVersion
	if !approve && reason == "" {
		return v, fmt.Errorf("a rejection needs a reason: %w", ErrInvalid)
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var pending int
		err := tx.QueryRowContext(ctx, `SELECT version FROM catalog WHERE resource = ? AND status = ?`, resource, CatalogPending).Scan(&pending)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("resource %s has no catalog entry waiting for review: %w", resource, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if version != pending {
			return fmt.Errorf("version %d of %s is not the one waiting for review (version %d is): read it with 'qz-central catalog show %s': %w", version, resource, pending, resource, ErrConflict)
		}
		status, action := CatalogApproved, "catalog.approve"
		if !approve {
			status, action = CatalogRejected, "catalog.reject"
		}
		if _, err := tx.ExecContext(ctx, `UPDATE catalog SET status = ?, reason = ?, decided = ? WHERE resource = ? AND version = ?`,
			status, reason, ts(s.now()), resource, version); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, actor, action, resource, fmt.Sprintf("version=%d reason=%s", version, reason)); err != nil {
			return err
		}
		vs, err := s.catalog(ctx, tx, `WHERE resource = ? AND version = ?`, resource, version)
		if err == nil && len(vs) == 1 {
			v = vs[0]
		}
		return err
	})
	return v, err
}

func (s *SQLite) catalog(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, where string, args ...any) ([]api.CatalogVersion, error) {
	rows, err := q.QueryContext(ctx, `SELECT entry, provider, version, status, reason, submitted, deadline, decided FROM catalog `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.CatalogVersion
	for rows.Next() {
		var v api.CatalogVersion
		var entry, sub, dl, dec string
		if err := rows.Scan(&entry, &v.Provider, &v.Version, &v.Status, &v.Reason, &sub, &dl, &dec); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(entry), &v.Entry); err != nil {
			return nil, err
		}
		v.Submitted, v.Deadline, v.Decided = parseTS(sub), parseTS(dl), parseTS(dec)
		out = append(out, v)
	}
	return out, rows.Err()
}

// CatalogLatest lists the newest version of every entry, whatever its
// review status, for the hub's reviewers.
func (s *SQLite) CatalogLatest(ctx context.Context) ([]api.CatalogVersion, error) {
	return s.catalog(ctx, s.db, `c WHERE version = (SELECT MAX(version) FROM catalog WHERE resource = c.resource) ORDER BY resource`)
}

// CatalogApproved lists the newest approved version of every entry: what
// departments see and apply for.
func (s *SQLite) CatalogApproved(ctx context.Context) ([]api.CatalogVersion, error) {
	return s.catalog(ctx, s.db, `c WHERE status = ? AND version = (SELECT MAX(version) FROM catalog WHERE resource = c.resource AND status = ?) ORDER BY resource`,
		CatalogApproved, CatalogApproved)
}

// CatalogVersions lists every version of one entry, newest first.
func (s *SQLite) CatalogVersions(ctx context.Context, resource string) ([]api.CatalogVersion, error) {
	return s.catalog(ctx, s.db, `WHERE resource = ? ORDER BY version DESC`, resource)
}
