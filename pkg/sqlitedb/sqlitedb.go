// Package sqlitedb opens the embedded, pure-Go SQLite databases that hold
// the agent's state and the hub's records, with the settings both need:
// WAL so the admin CLI can work beside a running daemon, a busy timeout,
// full fsync on commit, and immediate write transactions so two writers
// never deadlock on an upgrade from read to write.
package sqlitedb

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"

	_ "modernc.org/sqlite" // the "sqlite" driver
)

// Open opens (creating if needed) the database at path and applies schema,
// a list of idempotent statements.
func Open(path string, schema []string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	for _, s := range schema {
		if _, err := db.Exec(s); err != nil {
			db.Close()
			return nil, fmt.Errorf("open %s: schema: %w", path, err)
		}
	}
	return db, nil
}

// InTx runs fn in one write transaction, committing if it returns nil.
func InTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}
