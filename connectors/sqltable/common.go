package sqltable

import (
	"context"
	"database/sql"
	"strings"
	"time"
)

// ReadyPool sets up a dialect's connection pool the same way for every
// engine and checks that the database answers; on failure it closes db.
func ReadyPool(ctx context.Context, db *sql.DB) (*sql.DB, error) {
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// QuoteDotted quotes each dot-separated part of ident with q (a backquote
// or a double quote), doubling q inside: schema.table stays two names.
func QuoteDotted(ident, q string) string {
	parts := strings.Split(ident, ".")
	for i, p := range parts {
		parts[i] = q + strings.ReplaceAll(p, q, q+q) + q
	}
	return strings.Join(parts, ".")
}

// ConnSnapshot is a snapshot held by a transaction on a connection of its
// own. It cannot outlive the connection, so it has no token: a resumed
// snapshot is a new one.
type ConnSnapshot struct{ Conn *sql.Conn }

// BeginConnSnapshot takes a connection of its own and runs stmts on it
// (the statements that begin the engine's consistent read).
func BeginConnSnapshot(ctx context.Context, db *sql.DB, stmts ...string) (*ConnSnapshot, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return &ConnSnapshot{conn}, nil
}

// Q implements Snapshot.
func (s *ConnSnapshot) Q() Querier { return s.Conn }

// From implements Snapshot.
func (s *ConnSnapshot) From(table string) string { return table }

// Token implements Snapshot.
func (s *ConnSnapshot) Token() string { return "" }

// Close ends the transaction and returns the connection.
func (s *ConnSnapshot) Close() error {
	s.Conn.ExecContext(context.Background(), "ROLLBACK")
	return s.Conn.Close()
}
