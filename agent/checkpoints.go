package agent

// The hub's audit checkpoints, kept here. The hub signs a checkpoint of
// its audit log's head with its CA key at least every minute that records
// were added (central/checkpoint.go); this agent fetches them, keeps those
// that verify under the CA it pinned at enrolment, and exports them for
// 'qz-central audit verify --against DIR', which finds records cut from
// the end of the hub's log or rewritten before a checkpoint. The hub
// cannot take back what this agent holds.

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/anchor"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
)

// CounterCheckpointsRefused counts checkpoints from the hub that did not
// verify under its CA, and so were not kept.
const CounterCheckpointsRefused = "audit_checkpoints_refused"

// keepRecentCheckpoints is how many of the newest checkpoints are kept
// whatever their hour; older ones are thinned to the newest of each hour
// (UTC), about 8,800 a year of hub activity, some 3 MB.
const keepRecentCheckpoints = 24

// pruneCheckpoints thins the table as keepRecentCheckpoints says.
const pruneCheckpoints = `DELETE FROM audit_checkpoints
	WHERE seq NOT IN (SELECT seq FROM audit_checkpoints ORDER BY seq DESC LIMIT ?)
	AND seq NOT IN (SELECT MAX(seq) FROM audit_checkpoints GROUP BY substr(at, 1, 13))`

// Errors of keepCheckpoints.
var (
	// errCheckpointRefused: the hub sent a checkpoint its CA did not sign.
	errCheckpointRefused = errors.New("audit checkpoint from the hub refused")
	// errCheckpointConflict: the hub signed two heads for one record, so
	// its log was cut or rewritten since (a restore from a backup does it).
	errCheckpointConflict = errors.New("the hub signed two different heads for one audit record")
)

// checkpointLoop fetches new checkpoints as often as the hub signs them.
func (a *Agent) checkpointLoop(ctx context.Context) {
	for {
		wait, err := a.fetchCheckpoints(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errCheckpointRefused) || errors.Is(err, errCheckpointConflict) {
			a.log.Error("audit checkpoint from the hub not kept; the one held stays, give 'qz-agent audit checkpoints --export DIR' to the hub operator", "err", err)
		} else if err != nil {
			a.log.Warn("audit checkpoints not fetched; trying again", "err", err)
		}
		if !sleepCtx(ctx, wait) {
			return
		}
	}
}

// fetchCheckpoints asks the hub for checkpoints newer than the newest kept,
// keeps those that verify, and says when to ask again.
func (a *Agent) fetchCheckpoints(ctx context.Context) (time.Duration, error) {
	after, err := a.state.newestCheckpoint()
	if err != nil {
		return time.Minute, err
	}
	var resp api.AuditCheckpoints
	if err := a.call(ctx, http.MethodGet, "/v1/audit/checkpoints?after="+strconv.FormatInt(after, 10), nil, &resp); err != nil {
		return time.Minute, err
	}
	// Whatever the hub says, not more often than a second nor less than
	// an hour.
	wait := min(max(time.Duration(resp.IntervalMS)*time.Millisecond, time.Second), time.Hour)
	_, err = a.state.keepCheckpoints(a.id.CA, resp.Checkpoints)
	return wait, err
}

// keepCheckpoints stores the checkpoints that verify under ca and returns
// how many were new. One that does not verify is counted and named in the
// error (wrapping errCheckpointRefused); one for a record already held
// with another head is not kept either (errCheckpointConflict): the
// first stays, as the evidence.
func (s *State) keepCheckpoints(ca *x509.Certificate, cps []anchor.Checkpoint) (int, error) {
	var refused, conflicts []error
	kept := 0
	err := s.tx(context.Background(), func(tx *sql.Tx) error {
		for _, c := range cps {
			if err := c.Verify(ca); err != nil {
				refused = append(refused, fmt.Errorf("record %d: %w", c.Seq, err))
				continue
			}
			var held []byte
			err := tx.QueryRow(`SELECT body FROM audit_checkpoints WHERE seq = ?`, c.Seq).Scan(&held)
			if err == nil {
				var h anchor.Checkpoint
				if json.Unmarshal(held, &h) == nil && h.Head != c.Head {
					conflicts = append(conflicts, fmt.Errorf("record %d: signed %s at %s, now %s", c.Seq, h.Head, h.At.Format(time.RFC3339), c.Head))
				}
				continue
			} else if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			body, err := json.Marshal(c)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(`INSERT INTO audit_checkpoints (seq, at, body) VALUES (?, ?, ?)`, c.Seq, c.At.UTC().Format(time.RFC3339Nano), body); err != nil {
				return err
			}
			kept++
		}
		if len(refused) > 0 {
			if err := addCounter(tx, CounterCheckpointsRefused, int64(len(refused))); err != nil {
				return err
			}
		}
		_, err := tx.Exec(pruneCheckpoints, keepRecentCheckpoints)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("keep audit checkpoints: %w", err)
	}
	switch {
	case len(refused) > 0:
		return kept, fmt.Errorf("%w: %w", errCheckpointRefused, errors.Join(append(refused, conflicts...)...))
	case len(conflicts) > 0:
		return kept, fmt.Errorf("%w: %w", errCheckpointConflict, errors.Join(conflicts...))
	}
	return kept, nil
}

// newestCheckpoint is the record number of the newest checkpoint kept (0
// for none).
func (s *State) newestCheckpoint() (int64, error) {
	var seq sql.NullInt64
	err := s.db.QueryRow(`SELECT MAX(seq) FROM audit_checkpoints`).Scan(&seq)
	return seq.Int64, err
}

// checkpoints returns every kept checkpoint, oldest first.
func (s *State) checkpoints() ([]anchor.Checkpoint, error) {
	rows, err := s.db.Query(`SELECT body FROM audit_checkpoints ORDER BY seq`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []anchor.Checkpoint
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			return nil, err
		}
		var c anchor.Checkpoint
		if err := json.Unmarshal(body, &c); err != nil {
			return nil, fmt.Errorf("audit checkpoint in the state database: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// auditCheckpoints lists the kept checkpoints, or with dir exports them
// there for the hub operator's 'qz-central audit verify --against DIR'.
func auditCheckpoints(cfg Config, dir string, asJSON bool, w io.Writer) error {
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return err
	}
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return err
	}
	defer st.Close()
	cps, err := st.checkpoints()
	if err != nil {
		return err
	}
	switch {
	case dir != "":
		path, err := anchor.Write(dir, anchor.File{Holder: id.NodeID, Exported: time.Now().UTC(), Checkpoints: cps})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%d audit checkpoints written to %s; give the file to the hub operator for 'qz-central audit verify --against DIR'\n", len(cps), path)
		return nil
	case asJSON:
		if cps == nil {
			cps = []anchor.Checkpoint{}
		}
		return printJSON(w, cps)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECORD\tSIGNED (CST)\tHEAD")
	for _, c := range cps {
		fmt.Fprintf(tw, "%d\t%s\t%s\n", c.Seq, c.At.In(calendar.CST).Format(time.DateTime), c.Head)
	}
	return tw.Flush()
}
