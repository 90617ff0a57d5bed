package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/mask"
)

var applicationSchema = []string{
	`CREATE TABLE IF NOT EXISTS applications (
		id TEXT PRIMARY KEY,
		resource TEXT NOT NULL REFERENCES resources(id),
		provider TEXT NOT NULL,
		consumer TEXT NOT NULL REFERENCES nodes(id),
		fields TEXT NOT NULL,
		mode TEXT NOT NULL,
		purpose TEXT NOT NULL,
		scenario TEXT NOT NULL,
		state TEXT NOT NULL,
		reason TEXT NOT NULL DEFAULT '',
		created TEXT NOT NULL,
		deadline TEXT NOT NULL DEFAULT '',
		grant_id TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS applications_state ON applications(state, deadline)`,
	`CREATE TABLE IF NOT EXISTS application_steps (
		application TEXT NOT NULL REFERENCES applications(id),
		n INTEGER NOT NULL,
		state TEXT NOT NULL,
		actor TEXT NOT NULL,
		at TEXT NOT NULL,
		reason TEXT NOT NULL DEFAULT '',
		late INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (application, n)
	)`,
}

func newID(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// SubmitApplication checks a consumer's request against the approved
// catalog and records it. A dedicated (专用) consumer's application is
// approved at once, its grant made; any other waits for the hub's review,
// due by hubDeadline. A request the rules refuse is an error wrapping
// ErrInvalid that says why.
func (s *SQLite) SubmitApplication(ctx context.Context, consumer string, req api.ApplicationRequest, hubDeadline time.Time) (api.Application, error) {
	a := api.Application{ID: newID("a-"), Resource: req.Resource, Consumer: consumer, Fields: req.Fields, Mode: req.Mode,
		Purpose: req.Purpose, Scenario: req.Scenario, Created: s.now().UTC()}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		e, provider, err := s.checkRequest(ctx, tx, consumer, req)
		if err != nil {
			return err
		}
		a.Provider = provider
		if err := s.oneGrant(ctx, tx, req.Resource, consumer, req.Mode); err != nil {
			return err
		}
		fields, _ := json.Marshal(req.Fields)
		a.State, a.Deadline = api.AppHubReview, hubDeadline
		if slices.Contains(e.Dedicated, consumer) {
			a.State, a.Deadline = api.AppApproved, time.Time{}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO applications (id, resource, provider, consumer, fields, mode, purpose, scenario, state, created, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.ID, a.Resource, a.Provider, a.Consumer, string(fields), a.Mode, a.Purpose, a.Scenario, a.State, ts(a.Created), ts(a.Deadline)); err != nil {
			return err
		}
		if err := s.step(ctx, tx, a.ID, "submitted", consumer, "", 0); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, consumer, "application.submit", a.ID, fmt.Sprintf("resource=%s mode=%s fields=%s purpose=%s", a.Resource, a.Mode, strings.Join(a.Fields, ","), a.Purpose)); err != nil {
			return err
		}
		if a.State == api.AppApproved {
			if err := s.step(ctx, tx, a.ID, api.AppApproved, "hub", "dedicated share (专用)", 0); err != nil {
				return err
			}
			return s.grantFor(ctx, tx, &a, "hub", api.Decision{})
		}
		return s.step(ctx, tx, a.ID, api.AppHubReview, "hub", "", 0)
	})
	return a, err
}

// oneGrant refuses a second active grant of a resource in one mode to one
// consumer: a copy lives in one place, and the end of one grant
// (destruction included) must not touch what another delivers. Grants in
// different modes stand side by side: a batch copy and query or verify
// calls of the same resource are separate decisions.
func (s *SQLite) oneGrant(ctx context.Context, tx *sql.Tx, resource, consumer, mode string) error {
	var held string
	err := tx.QueryRowContext(ctx, `SELECT id FROM grants WHERE resource = ? AND consumer = ? AND mode = ? AND status = ? AND (expires = '' OR expires > ?)`,
		resource, consumer, mode, GrantActive, ts(s.now())).Scan(&held)
	if err == nil {
		return fmt.Errorf("node %s already holds grant %s for %s in mode %s: it must end before another is made: %w", consumer, held, resource, mode, ErrInvalid)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	return err
}

// checkRequest checks a request against the resource's approved catalog
// entry now: at submission, and again at each approval, since the entry may
// have changed (fields removed, a mode withdrawn, the category made none).
func (s *SQLite) checkRequest(ctx context.Context, tx *sql.Tx, consumer string, req api.ApplicationRequest) (api.CatalogEntry, string, error) {
	vs, err := s.catalog(ctx, tx, `WHERE resource = ? AND status = ? ORDER BY version DESC LIMIT 1`, req.Resource, CatalogApproved)
	if err != nil {
		return api.CatalogEntry{}, "", err
	}
	if len(vs) == 0 {
		return api.CatalogEntry{}, "", fmt.Errorf("resource %s is not in the catalog (or its entry is not approved yet): search with 'qz-agent catalog search': %w", req.Resource, ErrInvalid)
	}
	e, provider := vs[0].Entry, vs[0].Provider
	fail := func(format string, args ...any) (api.CatalogEntry, string, error) {
		return e, provider, fmt.Errorf(format+": %w", append(args, ErrInvalid)...)
	}
	switch {
	case e.Category == api.ShareNone:
		return fail("resource %s is not shared (不予共享) under %s: it cannot be applied for", req.Resource, e.LegalBasis)
	case consumer == provider:
		return fail("node %s provides %s itself", consumer, req.Resource)
	case !slices.Contains(e.Modes, req.Mode):
		return fail("resource %s is not offered in mode %q (it offers: %s)", req.Resource, req.Mode, strings.Join(e.Modes, ", "))
	case len(req.Fields) == 0:
		return fail("name the fields you need with --fields (the entry lists: %s)", fieldNames(e))
	case strings.TrimSpace(req.Purpose) == "":
		return fail("state the purpose (用途) with --purpose")
	}
	for _, f := range req.Fields {
		if !e.HasField(f) {
			return fail("field %q is not in the catalog entry of %s (it lists: %s)", f, req.Resource, fieldNames(e))
		}
	}
	var kind string
	if err := tx.QueryRowContext(ctx, `SELECT kind FROM resources WHERE id = ?`, req.Resource).Scan(&kind); err != nil {
		return e, provider, err
	}
	if kind == "file" && len(req.Fields) < len(e.Fields) {
		return fail("resource %s is a folder: its files travel whole, so apply for all its fields (%s)", req.Resource, fieldNames(e))
	}
	return e, provider, nil
}

func fieldNames(e api.CatalogEntry) string {
	var n []string
	for _, f := range e.Fields {
		n = append(n, f.Name)
	}
	return strings.Join(n, ", ")
}

// step appends to an application's history.
func (s *SQLite) step(ctx context.Context, tx *sql.Tx, id, state, actor, reason string, late int) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO application_steps (application, n, state, actor, at, reason, late)
		VALUES (?, (SELECT COUNT(*) FROM application_steps WHERE application = ?) + 1, ?, ?, ?, ?, ?)`, id, id, state, actor, ts(s.now()), reason, late)
	return err
}

// grantFor makes the grant of an approved application, with the masking
// rules the provider set.
func (s *SQLite) grantFor(ctx context.Context, tx *sql.Tx, a *api.Application, actor string, d api.Decision) error {
	if err := s.oneGrant(ctx, tx, a.Resource, a.Consumer, a.Mode); err != nil {
		return err
	}
	if d.Days < 0 || d.Days > 3660 {
		return fmt.Errorf("a grant lasts 1 to 3660 days (or without end): %w", ErrInvalid)
	}
	var expires time.Time
	if d.Days > 0 {
		expires = s.now().AddDate(0, 0, d.Days)
	}
	if err := checkLimits(a.Mode, d.Rate, d.Quota); err != nil {
		return err
	}
	a.Grant = newID("g-")
	if _, err := tx.ExecContext(ctx, `INSERT INTO grants (id, resource, provider, consumer, mode, fields, status, created, application, masks, expires, destroy, rate, quota) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.Grant, a.Resource, a.Provider, a.Consumer, a.Mode, strings.Join(a.Fields, ","), GrantActive, ts(s.now()), a.ID, masksJSON(d.Masks), ts(expires), d.Destroy, d.Rate, d.Quota); err != nil {
		return err
	}
	masks := d.Masks
	if _, err := tx.ExecContext(ctx, `UPDATE applications SET state = ?, deadline = '', grant_id = ? WHERE id = ?`, api.AppApproved, a.Grant, a.ID); err != nil {
		return err
	}
	if err := bump(ctx, tx, "grants"); err != nil {
		return err
	}
	return s.audit(ctx, tx, actor, "grant.add", a.Grant, fmt.Sprintf("application=%s resource=%s provider=%s consumer=%s mode=%s fields=%s masks=%s%s",
		a.ID, a.Resource, a.Provider, a.Consumer, a.Mode, strings.Join(a.Fields, ","), masksJSON(masks), limitsDetail(d.Rate, d.Quota)))
}

// checkLimits checks a grant's call limits: not negative, and only on a
// grant that answers calls.
func checkLimits(mode string, rate float64, quota int) error {
	switch {
	case math.IsNaN(rate) || math.IsInf(rate, 0) || rate < 0 || quota < 0:
		return fmt.Errorf("rate %g and quota %d must not be negative (0: the hub's defaults): %w", rate, quota, ErrInvalid)
	case (rate != 0 || quota != 0) && mode != api.ModeQuery && mode != api.ModeVerify:
		return fmt.Errorf("a rate and a quota bound query and verify calls; a grant in mode %s makes none, so leave them out: %w", mode, ErrInvalid)
	}
	return nil
}

// limitsDetail is a grant's call limits in its grant.add audit record.
func limitsDetail(rate float64, quota int) string {
	if rate == 0 && quota == 0 {
		return ""
	}
	return fmt.Sprintf(" rate=%g quota=%d", rate, quota)
}

// DecideApplication records a review: the hub's (hub true; the application
// must wait for the hub) or its provider's (actor must be the provider, the
// application must wait for it). A rejection needs a reason. The hub's
// approval of an unconditional resource approves it; of a conditional one,
// passes it to the provider, due by providerDeadline. late is how many
// working days after the step's deadline the decision comes.
func (s *SQLite) DecideApplication(ctx context.Context, id, actor string, hub bool, d api.Decision, providerDeadline time.Time, late int) (api.Application, error) {
	var a api.Application
	if !d.Approve && strings.TrimSpace(d.Reason) == "" {
		return a, fmt.Errorf("a rejection needs a reason (--reason): %w", ErrInvalid)
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if a, err = s.application(ctx, tx, id); err != nil {
			return err
		}
		want := api.AppProviderReview
		if hub {
			want = api.AppHubReview
		}
		switch {
		case a.State != want:
			return fmt.Errorf("application %s is %s, not waiting for %s: %w", id, a.State, map[bool]string{true: "the hub", false: "its provider"}[hub], ErrConflict)
		case !hub && actor != a.Provider:
			return fmt.Errorf("node %s is not the provider of %s (%s is): %w", actor, a.Resource, a.Provider, ErrInvalid)
		case hub && (len(d.Masks) > 0 || d.Days != 0 || d.Destroy || d.Rate != 0 || d.Quota != 0):
			return fmt.Errorf("masking, a term, destruction, a rate and a quota are the provider's to set, in its approval: %w", ErrInvalid)
		}
		if err := checkLimits(a.Mode, d.Rate, d.Quota); err != nil {
			return err
		}
		if len(d.Masks) > 0 {
			var kind string
			tx.QueryRowContext(ctx, `SELECT kind FROM resources WHERE id = ?`, a.Resource).Scan(&kind)
			if kind == "file" {
				return fmt.Errorf("resource %s is a folder: its files cannot be masked; approve it whole or reject it: %w", a.Resource, ErrInvalid)
			}
		}
		for f, r := range d.Masks {
			if !slices.Contains(a.Fields, f) {
				return fmt.Errorf("mask on field %q, which the application does not ask for (it asks for: %s): %w", f, strings.Join(a.Fields, ", "), ErrInvalid)
			}
			if _, err := mask.Parse(r); err != nil {
				return fmt.Errorf("field %s: %v: %w", f, err, ErrInvalid)
			}
		}
		if d.Approve {
			req := api.ApplicationRequest{Resource: a.Resource, Fields: a.Fields, Mode: a.Mode, Purpose: a.Purpose, Scenario: a.Scenario}
			if _, _, err := s.checkRequest(ctx, tx, a.Consumer, req); err != nil {
				return fmt.Errorf("the catalog changed since application %s: %w", id, err)
			}
		}
		step, action := "", ""
		switch {
		case !d.Approve:
			a.State, step, action = api.AppRejected, api.AppRejected, "application.reject"
		case hub:
			action = "application.hub_approve"
			vs, err := s.catalog(ctx, tx, `WHERE resource = ? AND status = ? ORDER BY version DESC LIMIT 1`, a.Resource, CatalogApproved)
			if err != nil {
				return err
			}
			if len(vs) == 1 && vs[0].Entry.Category == api.ShareUnconditional {
				a.State, step = api.AppApproved, api.AppApproved
			} else {
				a.State, step = api.AppProviderReview, api.AppProviderReview
			}
		default:
			a.State, step, action = api.AppApproved, api.AppApproved, "application.provider_approve"
		}
		if err := s.step(ctx, tx, id, step, actor, d.Reason, late); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, actor, action, id, fmt.Sprintf("state=%s reason=%s late=%d", a.State, d.Reason, late)); err != nil {
			return err
		}
		switch a.State {
		case api.AppApproved:
			return s.grantFor(ctx, tx, &a, actor, d)
		case api.AppProviderReview:
			a.Deadline = providerDeadline
		default:
			a.Deadline, a.Reason = time.Time{}, d.Reason
		}
		_, err = tx.ExecContext(ctx, `UPDATE applications SET state = ?, reason = ?, deadline = ? WHERE id = ?`, a.State, a.Reason, ts(a.Deadline), id)
		return err
	})
	if err == nil {
		a, err = s.Application(ctx, id)
	}
	return a, err
}

const appCols = `id, resource, provider, consumer, fields, mode, purpose, scenario, state, reason, created, deadline, grant_id,
	COALESCE((SELECT expires FROM grants g WHERE g.id = applications.grant_id), '')`

func (s *SQLite) application(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (api.Application, error) {
	a, err := scanApplication(q.QueryRowContext(ctx, `SELECT `+appCols+` FROM applications WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("application %s: %w", id, ErrNotFound)
	}
	return a, err
}

func scanApplication(sc interface{ Scan(...any) error }) (api.Application, error) {
	var a api.Application
	var fields, created, deadline, grantExpires string
	err := sc.Scan(&a.ID, &a.Resource, &a.Provider, &a.Consumer, &fields, &a.Mode, &a.Purpose, &a.Scenario, &a.State, &a.Reason, &created, &deadline, &a.Grant, &grantExpires)
	if a.State == api.AppApproved && grantExpires != "" && !time.Now().Before(parseTS(grantExpires)) {
		a.State = api.AppExpired // its grant ran out
	}
	if err == nil {
		err = json.Unmarshal([]byte(fields), &a.Fields)
	}
	a.Created, a.Deadline = parseTS(created), parseTS(deadline)
	return a, err
}

// Application returns one application with its history.
func (s *SQLite) Application(ctx context.Context, id string) (api.Application, error) {
	a, err := s.application(ctx, s.db, id)
	if err != nil {
		return a, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT state, actor, at, reason, late FROM application_steps WHERE application = ? ORDER BY n`, id)
	if err != nil {
		return a, err
	}
	defer rows.Close()
	for rows.Next() {
		var st api.ApplicationStep
		var at string
		if err := rows.Scan(&st.State, &st.Actor, &at, &st.Reason, &st.Late); err != nil {
			return a, err
		}
		st.At = parseTS(at)
		a.Steps = append(a.Steps, st)
	}
	return a, rows.Err()
}

// Applications lists applications a node takes part in (node "" for
// all), oldest first; states, when given, filters them.
func (s *SQLite) Applications(ctx context.Context, node string, states ...string) ([]api.Application, error) {
	where, args := []string{"1 = 1"}, []any{}
	if node != "" {
		where, args = append(where, "(provider = ? OR consumer = ?)"), append(args, node, node)
	}
	if len(states) > 0 {
		where = append(where, "state IN ("+strings.TrimSuffix(strings.Repeat("?, ", len(states)), ", ")+")")
		for _, st := range states {
			args = append(args, st)
		}
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+appCols+` FROM applications WHERE `+strings.Join(where, " AND ")+` ORDER BY created, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.Application
	for rows.Next() {
		a, err := scanApplication(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}
