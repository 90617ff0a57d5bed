package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

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
	var prev, updated string
	err = s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT state, updated FROM copies WHERE id = ?`, c.ID).Scan(&prev, &updated)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO copies (id, grant_id, state, updated, report) VALUES (?, ?, ?, ?, ?)`, c.ID, c.Grant, c.State, ts(c.Updated), raw)
			return err
		case err != nil:
			return err
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
