package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Operator roles.
const (
	RoleOperator = "operator" // nodes, grants, revocations
	RoleReviewer = "reviewer" // catalog and application review
)

// Operator is a person who runs admin commands from elsewhere with an
// operator certificate.
type Operator struct {
	Name, Role, Serial string
	Added, Revoked     time.Time
}

var operatorSchema = []string{
	`CREATE TABLE IF NOT EXISTS operators (
		name TEXT PRIMARY KEY,
		role TEXT NOT NULL,
		serial TEXT NOT NULL,
		added TEXT NOT NULL,
		revoked TEXT NOT NULL DEFAULT ''
	)`,
}

// AddOperator records an operator's certificate; a name given again gets
// the new certificate, and the old one stops working.
func (s *SQLite) AddOperator(ctx context.Context, name, role, serial string) error {
	if role != RoleOperator && role != RoleReviewer {
		return fmt.Errorf("role %q: use operator or reviewer: %w", role, ErrInvalid)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO operators (name, role, serial, added) VALUES (?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET role = excluded.role, serial = excluded.serial, added = excluded.added, revoked = ''`,
			name, role, serial, ts(s.now())); err != nil {
			return err
		}
		return s.audit(ctx, tx, Actor(ctx), "operator.add", name, "role="+role+" serial="+serial)
	})
}

// RevokeOperator ends an operator's access.
func (s *SQLite) RevokeOperator(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE operators SET revoked = ? WHERE name = ? AND revoked = ''`, ts(s.now()), name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("operator %s: %w", name, ErrNotFound)
		}
		return s.audit(ctx, tx, Actor(ctx), "operator.revoke", name, "")
	})
}

// Operators lists every operator.
func (s *SQLite) Operators(ctx context.Context) ([]Operator, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, role, serial, added, revoked FROM operators ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Operator
	for rows.Next() {
		var o Operator
		var added, revoked string
		if err := rows.Scan(&o.Name, &o.Role, &o.Serial, &added, &revoked); err != nil {
			return nil, err
		}
		o.Added, o.Revoked = parseTS(added), parseTS(revoked)
		out = append(out, o)
	}
	return out, rows.Err()
}

// OperatorFor returns the operator whose current, unrevoked certificate
// has the serial.
func (s *SQLite) OperatorFor(ctx context.Context, name, serial string) (Operator, error) {
	var o Operator
	var added string
	err := s.db.QueryRowContext(ctx, `SELECT name, role, serial, added FROM operators WHERE name = ? AND serial = ? AND revoked = ''`, name, serial).
		Scan(&o.Name, &o.Role, &o.Serial, &added)
	if errors.Is(err, sql.ErrNoRows) {
		return o, fmt.Errorf("operator %s with this certificate: %w", name, ErrNotFound)
	}
	o.Added = parseTS(added)
	return o, err
}
