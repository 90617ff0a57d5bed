package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/pkg/sqlitedb"
)

var schema = []string{
	`CREATE TABLE IF NOT EXISTS nodes (
		id TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		status TEXT NOT NULL,
		cert_serial TEXT NOT NULL DEFAULT '',
		cert_expiry TEXT NOT NULL DEFAULT '',
		seal_pub TEXT NOT NULL DEFAULT '',
		created TEXT NOT NULL,
		enrolled TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE TABLE IF NOT EXISTS tokens (
		hash TEXT PRIMARY KEY,
		node_id TEXT NOT NULL REFERENCES nodes(id),
		expires TEXT NOT NULL,
		used TEXT NOT NULL DEFAULT ''
	)`,
	// Every seal key a node ever enrolled with, so batches and receipts
	// sealed before a re-enrolment still verify.
	`CREATE TABLE IF NOT EXISTS seal_keys (
		node_id TEXT NOT NULL REFERENCES nodes(id),
		key_id TEXT NOT NULL,
		pub TEXT NOT NULL,
		added TEXT NOT NULL,
		PRIMARY KEY (node_id, key_id)
	)`,
	`CREATE TABLE IF NOT EXISTS resources (
		id TEXT PRIMARY KEY,
		provider TEXT NOT NULL REFERENCES nodes(id),
		kind TEXT NOT NULL,
		updated TEXT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS grants (
		id TEXT PRIMARY KEY,
		resource TEXT NOT NULL REFERENCES resources(id),
		provider TEXT NOT NULL,
		consumer TEXT NOT NULL REFERENCES nodes(id),
		mode TEXT NOT NULL,
		fields TEXT NOT NULL DEFAULT '',
		status TEXT NOT NULL,
		created TEXT NOT NULL,
		expires TEXT NOT NULL DEFAULT '',
		application TEXT NOT NULL DEFAULT '',
		masks TEXT NOT NULL DEFAULT '',
		destroy BOOLEAN NOT NULL DEFAULT FALSE,
		rate REAL NOT NULL DEFAULT 0,
		quota INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE TABLE IF NOT EXISTS destructions (
		grant_id TEXT PRIMARY KEY REFERENCES grants(id),
		consumer TEXT NOT NULL,
		receipt BLOB NOT NULL,
		at TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS grants_consumer ON grants(consumer, status)`,
	`CREATE TABLE IF NOT EXISTS batches (
		grant_id TEXT NOT NULL REFERENCES grants(id),
		seq INTEGER NOT NULL,
		resource TEXT NOT NULL,
		provider TEXT NOT NULL,
		consumer TEXT NOT NULL,
		size INTEGER NOT NULL,
		digest TEXT NOT NULL,
		stored TEXT NOT NULL,
		receipted TEXT NOT NULL DEFAULT '',
		receipt BLOB,
		purged TEXT NOT NULL DEFAULT '',
		rows INTEGER NOT NULL DEFAULT 0,
		delivered TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (grant_id, seq)
	)`,
	`CREATE INDEX IF NOT EXISTS batches_pending ON batches(consumer, receipted, grant_id, seq)`,
	// What a provider holds against its quota (HeldBytes).
	`CREATE INDEX IF NOT EXISTS batches_held ON batches(provider, receipted)`,
	// Counters that change with the data they name, for cheap polling.
	// Facts about the hub itself, such as the backup it was restored from.
	`CREATE TABLE IF NOT EXISTS hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS versions (name TEXT PRIMARY KEY, value INTEGER NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS audit (
		seq INTEGER PRIMARY KEY,
		at TEXT NOT NULL,
		actor TEXT NOT NULL,
		action TEXT NOT NULL,
		subject TEXT NOT NULL,
		detail TEXT NOT NULL,
		prev TEXT NOT NULL,
		hash TEXT NOT NULL
	)`,
}

// SQLite is the embedded Store.
type SQLite struct {
	db  *sql.DB
	now func() time.Time
	// node reads one node: prepared once, since every request of every
	// node asks it (a call and its answer included).
	node *sql.Stmt
}

var _ Store = (*SQLite)(nil)

// OpenSQLite opens or creates the hub database at path.
func OpenSQLite(path string) (*SQLite, error) {
	db, err := sqlitedb.Open(path, slices.Concat(schema, catalogSchema, applicationSchema, feedbackSchema, operatorSchema, copiesSchema, callsSchema, checkpointSchema, healSchema))
	if err != nil {
		return nil, err
	}
	for _, c := range [][3]string{{"grants", "masks", `TEXT NOT NULL DEFAULT ''`}, {"grants", "destroy", `BOOLEAN NOT NULL DEFAULT FALSE`},
		{"batches", "rows", `INTEGER NOT NULL DEFAULT 0`}, {"batches", "delivered", `TEXT NOT NULL DEFAULT ''`},
		{"nodes", "prev_serial", `TEXT NOT NULL DEFAULT ''`}, {"nodes", "last_seen", `TEXT NOT NULL DEFAULT ''`},
		{"grants", "rate", `REAL NOT NULL DEFAULT 0`}, {"grants", "quota", `INTEGER NOT NULL DEFAULT 0`}} {
		if err := addColumn(db, c[0], c[1], c[2]); err != nil {
			db.Close()
			return nil, err
		}
	}
	// Many requests read at once (every request checks its node); with
	// database/sql's default of 2 idle connections the rest would each
	// open a connection, and read the schema, only to close it after.
	db.SetMaxIdleConns(32)
	node, err := db.Prepare(`SELECT ` + nodeCols + ` FROM nodes WHERE id = ?`)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &SQLite{db: db, now: time.Now, node: node}, nil
}

// addColumn adds a column a database made by an earlier version lacks.
func addColumn(db *sql.DB, table, column, def string) error {
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?`, table, column).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	_, err := db.Exec(`ALTER TABLE ` + table + ` ADD COLUMN ` + column + ` ` + def)
	return err
}

// Close closes the database.
func (s *SQLite) Close() error {
	s.node.Close()
	return s.db.Close()
}

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func parseTS(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

// tx runs fn in one write transaction.
func (s *SQLite) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return sqlitedb.InTx(ctx, s.db, fn)
}

func bump(ctx context.Context, tx *sql.Tx, name string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO versions (name, value) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1`, name)
	return err
}

// GrantsVersion changes whenever a grant or a node's status changes.
func (s *SQLite) GrantsVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.db.QueryRowContext(ctx, `SELECT value FROM versions WHERE name = 'grants'`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return v, err
}

// AuditHash is the chain hash of a record: SHA-256 over the previous hash
// and the record's fields, each length-prefixed so no two records collide.
func AuditHash(r AuditRecord) string {
	h := sha256.New()
	for _, f := range []string{r.Prev, strconv.FormatInt(r.Seq, 10), ts(r.At), r.Actor, r.Action, r.Subject, r.Detail} {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (s *SQLite) audit(ctx context.Context, tx *sql.Tx, actor, action, subject, detail string) error {
	var prev string
	var last int64
	err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&last, &prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	r := AuditRecord{Seq: last + 1, At: s.now(), Actor: actor, Action: action, Subject: subject, Detail: detail, Prev: prev}
	r.Hash = AuditHash(r)
	_, err = tx.ExecContext(ctx, `INSERT INTO audit (seq, at, actor, action, subject, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Seq, ts(r.At), r.Actor, r.Action, r.Subject, r.Detail, r.Prev, r.Hash)
	return err
}

// Audit appends a record on its own.
func (s *SQLite) Audit(ctx context.Context, actor, action, subject, detail string) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return s.audit(ctx, tx, actor, action, subject, detail) })
}

// AuditLog returns every record in order.
func (s *SQLite) AuditLog(ctx context.Context) ([]AuditRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, actor, action, subject, detail, prev, hash FROM audit ORDER BY seq`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		var r AuditRecord
		var at string
		if err := rows.Scan(&r.Seq, &at, &r.Actor, &r.Action, &r.Subject, &r.Detail, &r.Prev, &r.Hash); err != nil {
			return nil, err
		}
		r.At = parseTS(at)
		out = append(out, r)
	}
	return out, rows.Err()
}

// AddNode adds a pending node with its first enrolment token.
func (s *SQLite) AddNode(ctx context.Context, id, name, tokenHash string, tokenExpiry time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM nodes WHERE id = ?`, id).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("node %s: %w", id, ErrExists)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (id, name, status, created) VALUES (?, ?, ?, ?)`, id, name, NodePending, ts(s.now())); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO tokens (hash, node_id, expires) VALUES (?, ?, ?)`, tokenHash, id, ts(tokenExpiry)); err != nil {
			return err
		}
		return s.audit(ctx, tx, Actor(ctx), "node.add", id, "name="+name)
	})
}

// NewToken issues another enrolment token for an existing node.
func (s *SQLite) NewToken(ctx context.Context, nodeID, tokenHash string, expiry time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT status FROM nodes WHERE id = ?`, nodeID).Scan(&status); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("node %s: %w", nodeID, ErrNotFound)
			}
			return err
		}
		if status == NodeRevoked {
			return fmt.Errorf("node %s is revoked: %w", nodeID, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO tokens (hash, node_id, expires) VALUES (?, ?, ?)`, tokenHash, nodeID, ts(expiry)); err != nil {
			return err
		}
		return s.audit(ctx, tx, Actor(ctx), "node.token", nodeID, "")
	})
}

func (s *SQLite) tokenNode(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, hash string) (string, error) {
	var node, expires, used string
	err := q.QueryRowContext(ctx, `SELECT node_id, expires, used FROM tokens WHERE hash = ?`, hash).Scan(&node, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrTokenInvalid
	}
	if err != nil {
		return "", err
	}
	if used != "" || !s.now().Before(parseTS(expires)) {
		return "", ErrTokenInvalid
	}
	return node, nil
}

// TokenNode returns the node of a valid token.
func (s *SQLite) TokenNode(ctx context.Context, hash string) (string, error) {
	return s.tokenNode(ctx, s.db, hash)
}

// Enroll consumes a token and activates the node.
func (s *SQLite) Enroll(ctx context.Context, hash, serial string, expiry time.Time, sealPub string) (string, error) {
	var node string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if node, err = s.tokenNode(ctx, tx, hash); err != nil {
			return err
		}
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT status FROM nodes WHERE id = ?`, node).Scan(&status); err != nil {
			return err
		}
		if status == NodeRevoked {
			return fmt.Errorf("node %s is revoked: %w", node, ErrConflict)
		}
		now := ts(s.now())
		// Every unused token of the node ends with this one: a token
		// handed out earlier (and perhaps to the wrong person) must not
		// enrol someone else over the node that now runs.
		if _, err := tx.ExecContext(ctx, `UPDATE tokens SET used = ? WHERE node_id = ? AND used = ''`, now, node); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET status = ?, cert_serial = ?, prev_serial = '', cert_expiry = ?, seal_pub = ?, enrolled = ? WHERE id = ?`,
			NodeActive, serial, ts(expiry), sealPub, now, node); err != nil {
			return err
		}
		pub, err := seal.ParsePublic(sealPub)
		if err != nil {
			return fmt.Errorf("seal key: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO seal_keys (node_id, key_id, pub, added) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			node, pub.KeyID(), sealPub, now); err != nil {
			return err
		}
		return s.audit(ctx, tx, node, "node.enroll", node, "cert_serial="+serial+" seal="+sealPub)
	})
	return node, err
}

// Renew records a node's renewed certificate. presented is the serial of
// the certificate the request came with: the current one, or the previous
// one when the answer to the last renewal never reached the node. The
// certificate replaced stays accepted (as the previous one) so that
// connections made with it go on until the node reconnects.
func (s *SQLite) Renew(ctx context.Context, node, presented, serial string, expiry time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var status, cur, prev string
		err := tx.QueryRowContext(ctx, `SELECT status, cert_serial, prev_serial FROM nodes WHERE id = ?`, node).Scan(&status, &cur, &prev)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %s: %w", node, ErrNotFound)
		} else if err != nil {
			return err
		}
		switch {
		case status != NodeActive:
			return fmt.Errorf("node %s is %s: %w", node, status, ErrConflict)
		case presented == cur:
			prev = cur
		case presented == prev && prev != "":
		default:
			return fmt.Errorf("certificate %s of node %s was superseded: %w", presented, node, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET cert_serial = ?, prev_serial = ?, cert_expiry = ? WHERE id = ?`, serial, prev, ts(expiry), node); err != nil {
			return err
		}
		return s.audit(ctx, tx, node, "node.renew", node, "cert_serial="+serial+" expiry="+ts(expiry))
	})
}

// SealKey returns one of a node's seal keys by key ID, current or past.
func (s *SQLite) SealKey(ctx context.Context, node, keyID string) (string, error) {
	var pub string
	err := s.db.QueryRowContext(ctx, `SELECT pub FROM seal_keys WHERE node_id = ? AND key_id = ?`, node, keyID).Scan(&pub)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("seal key %s of node %s: %w", keyID, node, ErrNotFound)
	}
	return pub, err
}

// SealKeyEnrolment returns the audit record (sequence and hash) of the
// enrolment that registered one of a node's seal keys, or ErrNotFound when
// no audited enrolment did: a key put in by any other way than
// 'qz-agent enroll' (a database edited by hand, say) has none, and agents
// that pinned the node's earlier key refuse it.
func (s *SQLite) SealKeyEnrolment(ctx context.Context, node, keyID string) (int64, string, error) {
	pub, err := s.SealKey(ctx, node, keyID)
	if err != nil {
		return 0, "", err
	}
	var seq int64
	var hash string
	// The enrolment's record ends with the key it registered (see Enroll).
	err = s.db.QueryRowContext(ctx, `SELECT seq, hash FROM audit WHERE action = 'node.enroll' AND subject = ? AND substr(detail, -length(?)) = ? ORDER BY seq LIMIT 1`,
		node, " seal="+pub, " seal="+pub).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", fmt.Errorf("enrolment of seal key %s of node %s: %w", keyID, node, ErrNotFound)
	}
	return seq, hash, err
}

// RevokeNode revokes a node: its certificate is refused from now on, and
// every active grant it takes part in ends with it, in one transaction, so
// that no batch of the node's (or for it) is stored or delivered after.
func (s *SQLite) RevokeNode(ctx context.Context, id string, destroy bool) ([]string, error) {
	var ended []string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE nodes SET status = ? WHERE id = ?`, NodeRevoked, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("node %s: %w", id, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tokens SET used = ? WHERE node_id = ? AND used = ''`, ts(s.now()), id); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT id FROM grants WHERE status = ? AND (provider = ? OR consumer = ?) ORDER BY id`, GrantActive, id, id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var g string
			if err := rows.Scan(&g); err != nil {
				rows.Close()
				return err
			}
			ended = append(ended, g)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := bump(ctx, tx, "grants"); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, Actor(ctx), "node.revoke", id, fmt.Sprintf("grants=%s destroy=%t", strings.Join(ended, ","), destroy)); err != nil {
			return err
		}
		for _, g := range ended {
			if err := s.revokeGrant(ctx, tx, g, destroy, "node "+id+" revoked"); err != nil {
				return err
			}
		}
		return nil
	})
	return ended, err
}

func scanNode(sc interface{ Scan(...any) error }) (Node, error) {
	var n Node
	var exp, created, enrolled string
	var seen string
	err := sc.Scan(&n.ID, &n.Name, &n.Status, &n.CertSerial, &n.PrevSerial, &exp, &n.SealPub, &created, &enrolled, &seen)
	n.CertExpiry, n.Created, n.Enrolled, n.LastSeen = parseTS(exp), parseTS(created), parseTS(enrolled), parseTS(seen)
	return n, err
}

const nodeCols = `id, name, status, cert_serial, prev_serial, cert_expiry, seal_pub, created, enrolled, last_seen`

// Node returns one node.
func (s *SQLite) Node(ctx context.Context, id string) (Node, error) {
	n, err := scanNode(s.node.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return n, fmt.Errorf("node %s: %w", id, ErrNotFound)
	}
	return n, err
}

// Nodes lists every node.
func (s *SQLite) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+nodeCols+` FROM nodes ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// RegisterResource records a provider's resource; a resource ID belongs to
// the first node that registers it.
func (s *SQLite) RegisterResource(ctx context.Context, r Resource) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var prov, kind string
		err := tx.QueryRowContext(ctx, `SELECT provider, kind FROM resources WHERE id = ?`, r.ID).Scan(&prov, &kind)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if _, err := tx.ExecContext(ctx, `INSERT INTO resources (id, provider, kind, updated) VALUES (?, ?, ?, ?)`, r.ID, r.Provider, r.Kind, ts(s.now())); err != nil {
				return err
			}
			return s.audit(ctx, tx, r.Provider, "resource.register", r.ID, "kind="+r.Kind)
		case err != nil:
			return err
		case prov != r.Provider:
			return fmt.Errorf("resource %s belongs to node %s: %w", r.ID, prov, ErrConflict)
		case kind != r.Kind:
			if _, err := tx.ExecContext(ctx, `UPDATE resources SET kind = ?, updated = ? WHERE id = ?`, r.Kind, ts(s.now()), r.ID); err != nil {
				return err
			}
			return s.audit(ctx, tx, r.Provider, "resource.update", r.ID, "kind="+r.Kind)
		}
		return nil
	})
}

// Resource returns one resource.
func (s *SQLite) Resource(ctx context.Context, id string) (Resource, error) {
	var r Resource
	var up string
	err := s.db.QueryRowContext(ctx, `SELECT id, provider, kind, updated FROM resources WHERE id = ?`, id).Scan(&r.ID, &r.Provider, &r.Kind, &up)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("resource %s: %w", id, ErrNotFound)
	}
	r.Updated = parseTS(up)
	return r, err
}

// MarkDelivered records the first complete delivery of a batch to its
// consumer, and audits it; later downloads change nothing.
func (s *SQLite) MarkDelivered(ctx context.Context, grant string, seq uint64) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var consumer string
		err := tx.QueryRowContext(ctx, `UPDATE batches SET delivered = ? WHERE grant_id = ? AND seq = ? AND delivered = '' RETURNING consumer`,
			ts(s.now()), grant, seq).Scan(&consumer)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, consumer, "batch.deliver", fmt.Sprintf("%s/%d", grant, seq), "")
	})
}

// GrantsExpiring counts the active grants whose term ends in (after, upTo].
func (s *SQLite) GrantsExpiring(ctx context.Context, after, upTo time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM grants WHERE status = ? AND expires <> '' AND expires > ? AND expires <= ?`,
		GrantActive, ts(after), ts(upTo)).Scan(&n)
	return n, err
}

// Resources lists every registered resource.
func (s *SQLite) Resources(ctx context.Context) ([]Resource, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, provider, kind, updated FROM resources ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Resource
	for rows.Next() {
		var r Resource
		var up string
		if err := rows.Scan(&r.ID, &r.Provider, &r.Kind, &up); err != nil {
			return nil, err
		}
		r.Updated = parseTS(up)
		out = append(out, r)
	}
	return out, rows.Err()
}

// AddGrant records a grant.
func (s *SQLite) AddGrant(ctx context.Context, g Grant) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// A grant ID names a folder of the payload store.
		if err := api.ValidID("grant", g.ID); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if err := checkLimits(g.Mode, g.Rate, g.Quota); err != nil {
			return err
		}
		if err := s.oneGrant(ctx, tx, g.Resource, g.Consumer, g.Mode); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO grants (id, resource, provider, consumer, mode, fields, status, created, expires, application, masks, destroy, rate, quota) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			g.ID, g.Resource, g.Provider, g.Consumer, g.Mode, strings.Join(g.Fields, ","), GrantActive, ts(s.now()), ts(g.Expires), g.Application, masksJSON(g.Masks), g.Destroy, g.Rate, g.Quota)
		if err != nil {
			return err
		}
		if err := bump(ctx, tx, "grants"); err != nil {
			return err
		}
		return s.audit(ctx, tx, Actor(ctx), "grant.add", g.ID, fmt.Sprintf("resource=%s provider=%s consumer=%s mode=%s%s", g.Resource, g.Provider, g.Consumer, g.Mode, limitsDetail(g.Rate, g.Quota)))
	})
}

// PutDestruction records a consumer's destruction receipt for a grant it
// was told to destroy; a second one changes nothing.
func (s *SQLite) PutDestruction(ctx context.Context, grant, consumer string, receipt []byte) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var cons string
		var destroy bool
		err := tx.QueryRowContext(ctx, `SELECT consumer, destroy FROM grants WHERE id = ?`, grant).Scan(&cons, &destroy)
		if errors.Is(err, sql.ErrNoRows) || err == nil && cons != consumer {
			return fmt.Errorf("grant %s: %w", grant, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !destroy {
			return fmt.Errorf("grant %s was not revoked with destruction: %w", grant, ErrConflict)
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO destructions (grant_id, consumer, receipt, at) VALUES (?, ?, ?, ?) ON CONFLICT (grant_id) DO NOTHING`,
			grant, consumer, receipt, ts(s.now()))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		return s.audit(ctx, tx, consumer, "grant.destroy", grant, string(receipt))
	})
}

// Destruction returns a grant's destruction receipt, or nil.
func (s *SQLite) Destruction(ctx context.Context, grant string) ([]byte, time.Time, error) {
	var b []byte
	var at string
	err := s.db.QueryRowContext(ctx, `SELECT receipt, at FROM destructions WHERE grant_id = ?`, grant).Scan(&b, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, time.Time{}, nil
	}
	return b, parseTS(at), err
}

func masksJSON(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// RevokeGrant ends a grant; pending batches stop being delivered at once.
// With destroy, the consumer is told to destroy what it received.
func (s *SQLite) RevokeGrant(ctx context.Context, id string, destroy bool) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return s.revokeGrant(ctx, tx, id, destroy, "") })
}

// revokeGrant is RevokeGrant inside a transaction; why, if not "", says
// what ended the grant (in its audit record and its application's history).
func (s *SQLite) revokeGrant(ctx context.Context, tx *sql.Tx, id string, destroy bool, why string) error {
	res, err := tx.ExecContext(ctx, `UPDATE grants SET status = ?, destroy = ? WHERE id = ? AND status = ?`, GrantRevoked, destroy, id, GrantActive)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if !destroy {
			return fmt.Errorf("active grant %s: %w", id, ErrNotFound)
		}
		// An ended grant can still be ordered destroyed.
		res, err = tx.ExecContext(ctx, `UPDATE grants SET destroy = ? WHERE id = ? AND status <> ? AND NOT destroy`, true, id, GrantActive)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("ended grant %s not ordered destroyed yet: %w", id, ErrNotFound)
		}
		if err := bump(ctx, tx, "grants"); err != nil {
			return err
		}
		return s.audit(ctx, tx, Actor(ctx), "grant.destroy_order", id, "")
	}
	if err := bump(ctx, tx, "grants"); err != nil {
		return err
	}
	var app string
	tx.QueryRowContext(ctx, `SELECT application FROM grants WHERE id = ?`, id).Scan(&app)
	if app != "" {
		if _, err := tx.ExecContext(ctx, `UPDATE applications SET state = ? WHERE id = ?`, api.AppRevoked, app); err != nil {
			return err
		}
		note := "grant " + id + " revoked"
		if why != "" {
			note += ": " + why
		}
		if err := s.step(ctx, tx, app, api.AppRevoked, Actor(ctx), note, 0); err != nil {
			return err
		}
	}
	detail := fmt.Sprintf("application=%s destroy=%t", app, destroy)
	if why != "" {
		detail += " (" + why + ")"
	}
	return s.audit(ctx, tx, Actor(ctx), "grant.revoke", id, detail)
}

const grantCols = `id, resource, provider, consumer, mode, fields, status, created, expires, application, masks, destroy, rate, quota`

func scanGrant(sc interface{ Scan(...any) error }) (Grant, error) {
	var g Grant
	var fields, created, expires, masks string
	err := sc.Scan(&g.ID, &g.Resource, &g.Provider, &g.Consumer, &g.Mode, &fields, &g.Status, &created, &expires, &g.Application, &masks, &g.Destroy, &g.Rate, &g.Quota)
	if fields != "" {
		g.Fields = strings.Split(fields, ",")
	}
	if masks != "" && err == nil {
		err = json.Unmarshal([]byte(masks), &g.Masks)
	}
	g.Created, g.Expires = parseTS(created), parseTS(expires)
	return g, err
}

// Grant returns one grant.
func (s *SQLite) Grant(ctx context.Context, id string) (Grant, error) {
	g, err := scanGrant(s.db.QueryRowContext(ctx, `SELECT `+grantCols+` FROM grants WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return g, fmt.Errorf("grant %s: %w", id, ErrNotFound)
	}
	return g, err
}

func (s *SQLite) grants(ctx context.Context, where string, args ...any) ([]Grant, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+grantCols+` FROM grants `+where+` ORDER BY created, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Grant
	for rows.Next() {
		g, err := scanGrant(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// GrantsFor lists the grants a node takes part in.
func (s *SQLite) GrantsFor(ctx context.Context, node string) ([]Grant, error) {
	return s.grants(ctx, `WHERE provider = ? OR consumer = ?`, node, node)
}

// Grants lists every grant.
func (s *SQLite) Grants(ctx context.Context) ([]Grant, error) { return s.grants(ctx, ``) }

// PutBatch records a stored batch.
// Backup writes a consistent copy of the database to path (VACUUM INTO),
// while others read and write it.
func (s *SQLite) Backup(ctx context.Context, path string) error {
	_, err := s.db.ExecContext(ctx, `VACUUM INTO ?`, path)
	return err
}

// RestoredFrom is when the backup this hub was restored from was taken,
// or the zero time.
func (s *SQLite) RestoredFrom(ctx context.Context) (time.Time, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM hub_meta WHERE key = 'restored_from'`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	return parseTS(v), err
}

// SetRestoredFrom records the time of the backup the hub was restored from.
func (s *SQLite) SetRestoredFrom(ctx context.Context, taken time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO hub_meta (key, value) VALUES ('restored_from', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, ts(taken))
	return err
}

// Adopt makes a certificate the node's current one: a certificate the
// hub's CA issued after the backup it was restored from, by a renewal the
// restored database does not remember.
func (s *SQLite) Adopt(ctx context.Context, node, serial string, expiry time.Time, detail string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE nodes SET cert_serial = ?, prev_serial = '', cert_expiry = ? WHERE id = ? AND status = ?`, serial, ts(expiry), node, NodeActive)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("node %s is not active: %w", node, ErrConflict)
		}
		return s.audit(ctx, tx, node, "node.adopt", node, "cert_serial="+serial+" "+detail)
	})
}

// TouchNode records when a node was last heard from.
func (s *SQLite) TouchNode(ctx context.Context, id string, at time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE nodes SET last_seen = ? WHERE id = ?`, ts(at), id)
	return err
}

// Summary counts what the hub holds, for qz-central status. Batches of
// ended grants await nothing: they are never delivered, only purged.
func (s *SQLite) Summary(ctx context.Context) (Summary, error) {
	var m Summary
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(b.size), 0),
		COALESCE(SUM(b.receipted = '' AND g.status = ? AND (g.expires = '' OR g.expires > ?)), 0),
		COALESCE(SUM(b.delivered = '' AND g.status = ? AND (g.expires = '' OR g.expires > ?)), 0)
		FROM batches b JOIN grants g ON g.id = b.grant_id WHERE b.purged = ''`, GrantActive, ts(s.now()), GrantActive, ts(s.now())).
		Scan(&m.Batches, &m.Bytes, &m.AwaitingReceipt, &m.AwaitingDelivery)
	if err != nil {
		return m, err
	}
	err = s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM grants WHERE status = ?`, GrantActive).Scan(&m.ActiveGrants)
	return m, err
}

// StoredBytes is the size of the batch payloads not yet purged.
func (s *SQLite) StoredBytes(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(SUM(size), 0) FROM batches WHERE purged = ''`).Scan(&n)
	return n, err
}

func (s *SQLite) PutBatch(ctx context.Context, b Batch) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// The grant is checked here, not only by the caller before the
		// upload: a revocation committed since must win.
		var status, expires string
		err := tx.QueryRowContext(ctx, `SELECT status, expires FROM grants WHERE id = ?`, b.Grant).Scan(&status, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("grant %s: %w", b.Grant, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if g := (Grant{Status: status, Expires: parseTS(expires)}); !g.Active(s.now()) {
			return fmt.Errorf("batch %s/%d: grant %s is %s: %w", b.Grant, b.Sequence, b.Grant, grantState(g, s.now()), ErrGrantEnded)
		}
		var digest string
		err = tx.QueryRowContext(ctx, `SELECT digest FROM batches WHERE grant_id = ? AND seq = ?`, b.Grant, b.Sequence).Scan(&digest)
		if err == nil {
			if digest == b.Digest {
				return nil
			}
			return fmt.Errorf("batch %s/%d already stored with another digest: %w", b.Grant, b.Sequence, ErrConflict)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO batches (grant_id, seq, resource, provider, consumer, size, digest, stored, rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			b.Grant, b.Sequence, b.Resource, b.Provider, b.Consumer, b.Size, b.Digest, ts(s.now()), b.Rows); err != nil {
			return err
		}
		return s.audit(ctx, tx, b.Provider, "batch.store", fmt.Sprintf("%s/%d", b.Grant, b.Sequence),
			fmt.Sprintf("resource=%s consumer=%s size=%d digest=%s", b.Resource, b.Consumer, b.Size, b.Digest))
	})
}

// grantState names why a grant is not active.
func grantState(g Grant, now time.Time) string {
	if g.Status == GrantActive && !g.Expires.IsZero() && !now.Before(g.Expires) {
		return GrantExpired
	}
	return g.Status
}

// HighestSequence is the highest sequence number stored for a grant.
func (s *SQLite) HighestSequence(ctx context.Context, grant string) (uint64, error) {
	var n uint64
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM batches WHERE grant_id = ?`, grant).Scan(&n)
	return n, err
}

// HeldBytes sums, by provider, the batches stored and not yet receipted
// under active grants: what a provider's quota counts besides its
// unfinished uploads. Not merely undelivered: a consumer that downloads
// and never confirms would otherwise let its provider fill the disk.
// Batches of ended grants are not counted: they wait only for their purge,
// and a revocation must not hold a provider's other lines back.
func (s *SQLite) HeldBytes(ctx context.Context, provider string) (map[string]int64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT b.provider, SUM(b.size) FROM batches b JOIN grants g ON g.id = b.grant_id
		WHERE (? = '' OR b.provider = ?) AND b.receipted = '' AND b.purged = '' AND g.status = ? AND (g.expires = '' OR g.expires > ?)
		GROUP BY b.provider`, provider, provider, GrantActive, ts(s.now()))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var p string
		var n int64
		if err := rows.Scan(&p, &n); err != nil {
			return nil, err
		}
		out[p] = n
	}
	return out, rows.Err()
}

const batchCols = `grant_id, seq, resource, provider, consumer, size, digest, stored, receipted, receipt, purged, rows`

func scanBatch(sc interface{ Scan(...any) error }) (Batch, error) {
	var b Batch
	var stored, receipted, purged string
	err := sc.Scan(&b.Grant, &b.Sequence, &b.Resource, &b.Provider, &b.Consumer, &b.Size, &b.Digest, &stored, &receipted, &b.Receipt, &purged, &b.Rows)
	b.Stored, b.Receipted, b.Purged = parseTS(stored), parseTS(receipted), parseTS(purged)
	return b, err
}

func (s *SQLite) batches(ctx context.Context, q string, args ...any) ([]Batch, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Batch
	for rows.Next() {
		b, err := scanBatch(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// Batch returns one batch record.
func (s *SQLite) Batch(ctx context.Context, grant string, seq uint64) (Batch, error) {
	b, err := scanBatch(s.db.QueryRowContext(ctx, `SELECT `+batchCols+` FROM batches WHERE grant_id = ? AND seq = ?`, grant, seq))
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("batch %s/%d: %w", grant, seq, ErrNotFound)
	}
	return b, err
}

// Batches lists batch records in (grant, sequence) order.
func (s *SQLite) Batches(ctx context.Context, grant string) ([]Batch, error) {
	if grant == "" {
		return s.batches(ctx, `SELECT `+batchCols+` FROM batches ORDER BY grant_id, seq`)
	}
	return s.batches(ctx, `SELECT `+batchCols+` FROM batches WHERE grant_id = ? ORDER BY seq`, grant)
}

// Pending lists what a consumer still has to fetch, active grants only.
func (s *SQLite) Pending(ctx context.Context, consumer string, limit int) ([]Batch, error) {
	// At most perGrant from each grant, so one stuck or busy grant cannot
	// hide the others.
	const perGrant = 16
	return s.batches(ctx, `SELECT `+batchCols+` FROM (
		SELECT `+prefixed("b.", batchCols)+`, ROW_NUMBER() OVER (PARTITION BY b.grant_id ORDER BY b.seq) AS n
		FROM batches b JOIN grants g ON g.id = b.grant_id
		WHERE b.consumer = ? AND b.receipted = '' AND g.status = ? AND (g.expires = '' OR g.expires > ?)
	) p WHERE n <= ? ORDER BY grant_id, seq LIMIT ?`, consumer, GrantActive, ts(s.now()), perGrant, limit)
}

func prefixed(p, cols string) string {
	parts := strings.Split(cols, ", ")
	for i := range parts {
		parts[i] = p + parts[i]
	}
	return strings.Join(parts, ", ")
}

// PutReceipt records a consumer's receipt; a repeat is a no-op.
func (s *SQLite) PutReceipt(ctx context.Context, grant string, seq uint64, receipt []byte, at time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var receipted, consumer string
		err := tx.QueryRowContext(ctx, `SELECT receipted, consumer FROM batches WHERE grant_id = ? AND seq = ?`, grant, seq).Scan(&receipted, &consumer)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("batch %s/%d: %w", grant, seq, ErrNotFound)
		}
		if err != nil || receipted != "" {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET receipted = ?, receipt = ? WHERE grant_id = ? AND seq = ?`, ts(at), receipt, grant, seq); err != nil {
			return err
		}
		return s.audit(ctx, tx, consumer, "batch.receipt", fmt.Sprintf("%s/%d", grant, seq), "")
	})
}

// Purgeable lists receipted batches whose retention has passed.
func (s *SQLite) Purgeable(ctx context.Context, cutoff time.Time) ([]Batch, error) {
	// Receipted batches, and batches of grants that ended (they will never
	// be delivered), once the retention has passed.
	c := ts(cutoff)
	return s.batches(ctx, `SELECT `+prefixed("b.", batchCols)+` FROM batches b JOIN grants g ON g.id = b.grant_id
		WHERE b.purged = '' AND ((b.receipted != '' AND b.receipted < ?) OR (g.status != ? AND b.stored < ?))
		ORDER BY b.grant_id, b.seq`, c, GrantActive, c)
}

// MarkPurged records that a batch's payload was deleted.
func (s *SQLite) MarkPurged(ctx context.Context, grant string, seq uint64) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET purged = ? WHERE grant_id = ? AND seq = ?`, ts(s.now()), grant, seq); err != nil {
			return err
		}
		return s.audit(ctx, tx, "hub", "batch.purge", fmt.Sprintf("%s/%d", grant, seq), "")
	})
}
