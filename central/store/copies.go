package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// Copies are the progress reports of full copies (批量复制), as each
// provider's agent sends them: the latest report per copy.
var copiesSchema = []string{
	`CREATE TABLE IF NOT EXISTS copies (
		id TEXT PRIMARY KEY,
		grant_id TEXT NOT NULL REFERENCES grants(id),
		state TEXT NOT NULL,
		updated TEXT NOT NULL,
		report TEXT NOT NULL
	)`,
}

// PutCopy records a copy's latest progress and returns the state it had
// before ("" for a new copy). A report older than the one held is ignored.
func (s *SQLite) PutCopy(ctx context.Context, c api.Copy) (string, error) {
	raw, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	var prev, updated, grant string
	err = s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT state, updated, grant_id FROM copies WHERE id = ?`, c.ID).Scan(&prev, &updated, &grant)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO copies (id, grant_id, state, updated, report) VALUES (?, ?, ?, ?, ?)`, c.ID, c.Grant, c.State, ts(c.Updated), raw)
			return err
		case err != nil:
			return err
		case grant != c.Grant:
			// A copy belongs to the grant it was first reported under:
			// one provider must not overwrite another's copy by its ID.
			prev = ""
			return fmt.Errorf("copy %s belongs to another grant than %s: %w", c.ID, c.Grant, ErrConflict)
		case parseTS(updated).After(c.Updated):
			return nil
		}
		_, err = tx.ExecContext(ctx, `UPDATE copies SET state = ?, updated = ?, report = ? WHERE id = ?`, c.State, ts(c.Updated), raw, c.ID)
		return err
	})
	return prev, err
}

// Copies lists the copies reported, newest first.
func (s *SQLite) Copies(ctx context.Context) ([]api.Copy, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT report FROM copies ORDER BY id DESC`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.Copy
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, err
		}
		var c api.Copy
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
