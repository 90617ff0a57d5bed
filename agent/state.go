package agent

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/sqlitedb"
)

// spoolTable holds the sealed batches, in spool order, with where each
// stands (spoolWaiting…). AUTOINCREMENT: an id is never handed out twice,
// whatever was removed.
const spoolTable = `CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, grant_id TEXT NOT NULL, seq INTEGER NOT NULL, resource TEXT NOT NULL, file TEXT NOT NULL, size INTEGER NOT NULL, created TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'spooled', UNIQUE (grant_id, seq))`

var stateSchema = []string{
	// Connector state per grant, scope "src/GRANT" or "sink/GRANT".
	`CREATE TABLE IF NOT EXISTS kv (scope TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (scope, key))`,
	// Next sequence number to seal, per grant.
	`CREATE TABLE IF NOT EXISTS seqs (grant_id TEXT PRIMARY KEY, next INTEGER NOT NULL)`,
	spoolTable,
	// Grants as last heard from the hub, so a restart without the hub
	// keeps producing.
	`CREATE TABLE IF NOT EXISTS grants (id TEXT PRIMARY KEY, info TEXT NOT NULL)`,
	// Last applied sequence per consumed grant.
	`CREATE TABLE IF NOT EXISTS applied (grant_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, at TEXT NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS receipts (grant_id TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (grant_id, seq))`,
	`CREATE TABLE IF NOT EXISTS rejections (id INTEGER PRIMARY KEY, at TEXT NOT NULL, grant_id TEXT NOT NULL, seq INTEGER NOT NULL, side TEXT NOT NULL, reason TEXT NOT NULL)`,
	// Lines that are stopped, and why: shown by status until they move again.
	`CREATE TABLE IF NOT EXISTS stopped (grant_id TEXT NOT NULL, side TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (grant_id, side))`,
	// What the running agent reports about itself (transport in use).
	`CREATE TABLE IF NOT EXISTS runtime (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
	// Monotonic counters, for status and for tests that bound re-sent bytes.
	`CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS audit_checkpoints (seq INTEGER PRIMARY KEY, at TEXT NOT NULL, body BLOB NOT NULL)`, // the hub's, see checkpoints.go
	// This node's own signed approvals of applications for its conditional
	// resources, and the hub grant each was matched to (see decide.go).
	`CREATE TABLE IF NOT EXISTS approvals (application TEXT PRIMARY KEY, grant_id TEXT NOT NULL DEFAULT '', record BLOB NOT NULL, signature BLOB NOT NULL)`,
	// Peers' seal keys, pinned on first use (see peers.go).
	`CREATE TABLE IF NOT EXISTS peer_keys (node TEXT NOT NULL, key_id TEXT NOT NULL, pub TEXT NOT NULL, first_seen TEXT NOT NULL, status TEXT NOT NULL, enrolment TEXT NOT NULL DEFAULT '', PRIMARY KEY (node, key_id))`,
}

// Counter names.
const (
	CounterUploadAttempted   = "upload_bytes_attempted"   // sum of (size - resume offset) over upload requests
	CounterUploaded          = "upload_bytes_completed"   // sum of sizes of batches the hub stored
	CounterDownloadAttempted = "download_bytes_attempted" // sum of (size - resume offset) over download requests
	CounterApplied           = "applied_bytes"            // sum of sizes of batches applied
	CounterBatchesSealed     = "batches_sealed"
	CounterBatchesApplied    = "batches_applied"
	CounterSpoolFullWaits    = "spool_full_waits"
	CounterRejected          = "batches_rejected"
	CounterKeptReleased      = "kept_released"  // kept batches let go once the consumer's receipt was checked
	CounterKeptDropped       = "kept_dropped"   // kept batches let go early to make room for new ones
	CounterResent            = "batches_resent" // kept batches sent again because the hub's copy was damaged
	CounterReproduced        = "batches_reproduced"
)

// State is the agent's embedded database.
type State struct {
	db *sql.DB
}

// Where a spooled batch stands.
const (
	spoolWaiting     = "spooled"     // sealed, to be uploaded
	spoolKept        = "kept"        // the hub stored it; kept until the consumer's receipt is known
	spoolQuarantined = "quarantined" // damaged; its file is in the quarantine folder
)

// OpenState opens or creates the state database.
func OpenState(path string) (*State, error) {
	db, err := sqlitedb.Open(path, stateSchema)
	if err != nil {
		return nil, err
	}
	if err := migrateSpool(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &State{db: db}, nil
}

// migrateSpool brings a spool index made by an earlier version to this one.
// Those set a damaged batch aside by negating its id, and their plain
// INTEGER PRIMARY KEY could then give a later batch an id of 0 or below,
// which they never uploaded. The table is rebuilt with AUTOINCREMENT and a
// state column: rows with a negative id become quarantined (openSpool
// gives back those whose file is still in the spool folder: batches that
// only had the unlucky id), every other row waits for upload.
func migrateSpool(db *sql.DB) error {
	return sqlitedb.InTx(context.Background(), db, func(tx *sql.Tx) error {
		// Checked inside the write transaction: another process opening
		// the database at the same moment may have migrated it already.
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('spool') WHERE name = 'state'`).Scan(&n); err != nil || n > 0 {
			return err
		}
		for _, q := range []string{
			`ALTER TABLE spool RENAME TO spool_old`,
			spoolTable,
			`INSERT INTO spool (grant_id, seq, resource, file, size, created, state)
				SELECT grant_id, seq, resource, file, size, created, CASE WHEN id < 0 THEN 'quarantined' ELSE 'spooled' END FROM spool_old ORDER BY id`,
			`DROP TABLE spool_old`,
		} {
			if _, err := tx.Exec(q); err != nil {
				return fmt.Errorf("migrate spool index: %w", err)
			}
		}
		return nil
	})
}

// Close closes the database.
func (s *State) Close() error { return s.db.Close() }

// view reads one scope's committed state.
type view struct {
	db    *sql.DB
	scope string
}

var _ connectors.State = view{}

func (v view) Scope() string { return v.scope }

func (v view) Get(key string) ([]byte, bool, error) {
	var b []byte
	err := v.db.QueryRow(`SELECT value FROM kv WHERE scope = ? AND key = ?`, v.scope, key).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	return b, err == nil, err
}

func (v view) Scan(prefix string, fn func(string, []byte) error) error {
	rows, err := v.db.Query(`SELECT key, value FROM kv WHERE scope = ? AND key >= ? AND key < ? ORDER BY key`, v.scope, prefix, prefix+"\xff")
	if err != nil {
		return err
	}
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	for rows.Next() {
		var e kv
		if err := rows.Scan(&e.k, &e.v); err != nil {
			rows.Close()
			return err
		}
		all = append(all, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, e := range all {
		if err := fn(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}

// withKey returns, by scope, the value of key in every scope that has it.
func (s *State) withKey(key string) (map[string][]byte, error) {
	rows, err := s.db.Query(`SELECT scope, value FROM kv WHERE key = ?`, key)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var scope string
		var v []byte
		if err := rows.Scan(&scope, &v); err != nil {
			return nil, err
		}
		out[scope] = v
	}
	return out, rows.Err()
}

func (s *State) view(scope string) connectors.State { return view{db: s.db, scope: scope} }

func applyChanges(tx *sql.Tx, scope string, ch *connectors.Changes) error {
	return ch.Each(func(k string, v []byte) error {
		var err error
		if v == nil {
			_, err = tx.Exec(`DELETE FROM kv WHERE scope = ? AND key = ?`, scope, k)
		} else {
			_, err = tx.Exec(`INSERT INTO kv (scope, key, value) VALUES (?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value`, scope, k, v)
		}
		return err
	})
}

func (s *State) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return sqlitedb.InTx(ctx, s.db, fn)
}

func addCounter(tx interface {
	Exec(string, ...any) (sql.Result, error)
}, name string, n int64) error {
	_, err := tx.Exec(`INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value`, name, n)
	return err
}

// Add increments a counter on its own.
func (s *State) Add(name string, n int64) error { return addCounter(s.db, name, n) }

// Counters returns every counter.
func (s *State) Counters() (map[string]int64, error) {
	rows, err := s.db.Query(`SELECT name, value FROM counters`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, rows.Err()
}

// commitChanges commits state changes that produced no batch.
func (s *State) commitChanges(ctx context.Context, scope string, ch *connectors.Changes) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return applyChanges(tx, scope, ch) })
}

func (s *State) nextSeq(grant string) (uint64, error) {
	var n uint64
	err := s.db.QueryRow(`SELECT next FROM seqs WHERE grant_id = ?`, grant).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 1, nil
	}
	return n, err
}

// spoolEntry is a sealed batch in the spool.
type spoolEntry struct {
	ID       int64
	Grant    string
	Seq      uint64
	Resource string
	File     string
	Size     int64
	State    string
}

// commitSealed records a spooled batch, the source's state changes and the
// next sequence number, atomically: the checkpoint moves only with a durable
// batch.
func (s *State) commitSealed(ctx context.Context, e spoolEntry, ch *connectors.Changes) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`INSERT INTO spool (grant_id, seq, resource, file, size, created) VALUES (?, ?, ?, ?, ?, ?)`,
			e.Grant, e.Seq, e.Resource, e.File, e.Size, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO seqs (grant_id, next) VALUES (?, ?) ON CONFLICT (grant_id) DO UPDATE SET next = excluded.next`, e.Grant, e.Seq+1); err != nil {
			return err
		}
		if err := addCounter(tx, CounterBatchesSealed, 1); err != nil {
			return err
		}
		return applyChanges(tx, "src/"+e.Grant, ch)
	})
}

// spooled lists the batches waiting for upload, in spool order.
func (s *State) spooled() ([]spoolEntry, error) {
	return s.spoolRows(`WHERE state = ? ORDER BY id`, spoolWaiting)
}

// spoolAll lists every row of the spool index, whatever its state.
func (s *State) spoolAll() ([]spoolEntry, error) { return s.spoolRows(`ORDER BY id`) }

func (s *State) spoolRows(where string, args ...any) ([]spoolEntry, error) {
	rows, err := s.db.Query(`SELECT id, grant_id, seq, resource, file, size, state FROM spool `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []spoolEntry
	for rows.Next() {
		var e spoolEntry
		if err := rows.Scan(&e.ID, &e.Grant, &e.Seq, &e.Resource, &e.File, &e.Size, &e.State); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// setSpoolState moves a batch to another state; it reports whether the
// batch was still in the state from.
func (s *State) setSpoolState(id int64, from, to string) (bool, error) {
	res, err := s.db.Exec(`UPDATE spool SET state = ? WHERE id = ? AND state = ?`, to, id, from)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// setAside takes a spooled batch out of the upload order without
// forgetting it: its row stays, quarantined, and names its file.
func (s *State) setAside(id int64) error {
	_, err := s.db.Exec(`UPDATE spool SET state = ? WHERE id = ?`, spoolQuarantined, id)
	return err
}

// spoolEntryOf returns the spool row of one batch (sql.ErrNoRows if none).
func (s *State) spoolEntryOf(grant string, seq uint64) (spoolEntry, error) {
	es, err := s.spoolRows(`WHERE grant_id = ? AND seq = ?`, grant, seq)
	if err == nil && len(es) == 0 {
		err = sql.ErrNoRows
	}
	if err != nil {
		return spoolEntry{}, err
	}
	return es[0], nil
}

// commitReproduced records the batch that takes the place of one that
// could not be sent, under its sequence number, with the source's state
// changes: the row of the old one (quarantined, if any) goes, its file stays
// in the quarantine folder.
func (s *State) commitReproduced(ctx context.Context, e spoolEntry, ch *connectors.Changes) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`DELETE FROM spool WHERE grant_id = ? AND seq = ?`, e.Grant, e.Seq); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO spool (grant_id, seq, resource, file, size, created) VALUES (?, ?, ?, ?, ?, ?)`,
			e.Grant, e.Seq, e.Resource, e.File, e.Size, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
			return err
		}
		if err := addCounter(tx, CounterReproduced, 1); err != nil {
			return err
		}
		return applyChanges(tx, "src/"+e.Grant, ch)
	})
}

// markKept records that the hub stored a waiting batch: it stays, kept,
// until its consumer's receipt is known. It reports whether the batch was
// still waiting.
func (s *State) markKept(ctx context.Context, e spoolEntry) (bool, error) {
	var ok bool
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE spool SET state = ? WHERE id = ? AND state = ?`, spoolKept, e.ID, spoolWaiting)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if ok = n == 1; !ok || err != nil {
			return err
		}
		return addCounter(tx, CounterUploaded, e.Size)
	})
	return ok, err
}

// unspool removes a batch from the index if it is still in the state e
// names, and reports whether it was; the caller deletes the file after.
func (s *State) unspool(ctx context.Context, e spoolEntry, counter string) (bool, error) {
	var ok bool
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM spool WHERE id = ? AND state = ?`, e.ID, e.State)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if ok = n == 1; !ok || err != nil || counter == "" {
			return err
		}
		return addCounter(tx, counter, 1)
	})
	return ok, err
}

func (s *State) saveGrants(ctx context.Context, gs []api.GrantInfo) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`DELETE FROM grants`); err != nil {
			return err
		}
		for _, g := range gs {
			b, _ := json.Marshal(g)
			if _, err := tx.Exec(`INSERT INTO grants (id, info) VALUES (?, ?)`, g.ID, string(b)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *State) loadGrants() ([]api.GrantInfo, error) {
	rows, err := s.db.Query(`SELECT info FROM grants ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.GrantInfo
	for rows.Next() {
		var b string
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		var g api.GrantInfo
		if err := json.Unmarshal([]byte(b), &g); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

func (s *State) applied(grant string) (uint64, error) {
	var n uint64
	err := s.db.QueryRow(`SELECT seq FROM applied WHERE grant_id = ?`, grant).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return n, err
}

// commitApplied records an applied batch with the sink's state and the
// receipt, atomically.
func (s *State) commitApplied(ctx context.Context, grant string, seq uint64, size int64, ch *connectors.Changes, receipt []byte) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`INSERT INTO applied (grant_id, seq, at) VALUES (?, ?, ?) ON CONFLICT (grant_id) DO UPDATE SET seq = excluded.seq, at = excluded.at`,
			grant, seq, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO receipts (grant_id, seq, body) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, grant, seq, receipt); err != nil {
			return err
		}
		if err := addCounter(tx, CounterBatchesApplied, 1); err != nil {
			return err
		}
		if err := addCounter(tx, CounterApplied, size); err != nil {
			return err
		}
		return applyChanges(tx, "sink/"+grant, ch)
	})
}

func (s *State) receipt(grant string, seq uint64) ([]byte, error) {
	var b []byte
	err := s.db.QueryRow(`SELECT body FROM receipts WHERE grant_id = ? AND seq = ?`, grant, seq).Scan(&b)
	return b, err
}

func (s *State) reject(grant string, seq uint64, side, reason string) error {
	return s.tx(context.Background(), func(tx *sql.Tx) error {
		if _, err := tx.Exec(`INSERT INTO rejections (at, grant_id, seq, side, reason) VALUES (?, ?, ?, ?, ?)`,
			time.Now().UTC().Format(time.RFC3339Nano), grant, seq, side, reason); err != nil {
			return err
		}
		return addCounter(tx, CounterRejected, 1)
	})
}

// Rejection is a batch this agent or the hub refused.
type Rejection struct {
	At     time.Time `json:"at"`
	Grant  string    `json:"grant"`
	Seq    uint64    `json:"seq"`
	Side   string    `json:"side"` // "hub" (our upload refused) or "consumer" (we refused a delivery)
	Reason string    `json:"reason"`
}

// Rejections lists every recorded rejection.
func (s *State) Rejections() ([]Rejection, error) {
	rows, err := s.db.Query(`SELECT at, grant_id, seq, side, reason FROM rejections ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Rejection
	for rows.Next() {
		var r Rejection
		var at string
		if err := rows.Scan(&at, &r.Grant, &r.Seq, &r.Side, &r.Reason); err != nil {
			return nil, err
		}
		r.At, _ = time.Parse(time.RFC3339Nano, at)
		out = append(out, r)
	}
	return out, rows.Err()
}

// StoppedLine is a grant whose batches cannot move until something is fixed.
type StoppedLine struct {
	Grant  string    `json:"grant"`
	Side   string    `json:"side"` // "provider" or "consumer"
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

func (s *State) setStopped(grant, side, reason string) {
	s.db.Exec(`INSERT INTO stopped (grant_id, side, at, reason) VALUES (?, ?, ?, ?) ON CONFLICT (grant_id, side) DO UPDATE SET at = excluded.at, reason = excluded.reason`,
		grant, side, time.Now().UTC().Format(time.RFC3339Nano), reason)
}

func (s *State) clearStopped(grant, side string) {
	s.db.Exec(`DELETE FROM stopped WHERE grant_id = ? AND side = ?`, grant, side)
}

// Stopped lists the stopped lines.
func (s *State) Stopped() ([]StoppedLine, error) {
	rows, err := s.db.Query(`SELECT grant_id, side, at, reason FROM stopped ORDER BY grant_id, side`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StoppedLine
	for rows.Next() {
		var l StoppedLine
		var at string
		if err := rows.Scan(&l.Grant, &l.Side, &at, &l.Reason); err != nil {
			return nil, err
		}
		l.At, _ = time.Parse(time.RFC3339Nano, at)
		out = append(out, l)
	}
	return out, rows.Err()
}

func (s *State) setRuntime(key, value string) {
	s.db.Exec(`INSERT INTO runtime (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
}

func (s *State) runtime(key string) string {
	var v string
	s.db.QueryRow(`SELECT value FROM runtime WHERE key = ?`, key).Scan(&v)
	return v
}
