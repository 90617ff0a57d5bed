// Package sqlitedb opens the embedded, pure-Go SQLite databases that hold
// the agent's state and the hub's records, with the settings both need:
// WAL so the admin CLI can work beside a running daemon, a busy timeout,
// full fsync on commit, and immediate write transactions so two writers
// never deadlock on an upgrade from read to write.
package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"time"

	"modernc.org/sqlite" // the "sqlite" driver
)

// openWait bounds how long Open waits for other processes opening the
// same new database (see Open).
const openWait = 30 * time.Second

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
	// The schema goes in one immediate transaction, which waits its turn
	// behind other writers. Processes that open a new database at the same
	// moment (the daemon and `status` on a fresh state folder) can still
	// meet SQLITE_BUSY without the busy handler being asked, while the
	// first of them turns the file to WAL: that is retried.
	deadline := time.Now().Add(openWait)
	for {
		err = InTx(context.Background(), db, func(tx *sql.Tx) error {
			for _, s := range schema {
				if _, err := tx.Exec(s); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			return db, nil
		}
		if !IsBusy(err) || time.Now().After(deadline) {
			db.Close()
			return nil, fmt.Errorf("open %s: schema: %w", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// IsBusy reports whether err is SQLite's "database is locked" (SQLITE_BUSY,
// with any extended code).
func IsBusy(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && e.Code()&0xff == 5
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
