package agent

// The provider decides (谁提供谁负责): the hub lists grants, but this
// node's agent produces batches and answers calls only for the grants it
// can check itself against its own config and its own signed approvals.
// The hub is a router and a registry, not a trusted party; a grant made
// by its operator alone, or written into its database by hand, is refused
// here, reported to the hub (audited there) and shown in qz-agent status.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// approvalDomain separates approval signatures from every other seal.
const approvalDomain = "qianzhi-approval-v1"

// termSkew is how much later than this node's own approval allows a
// grant's end may fall: the hub counts the term from its own clock when
// the decision reaches it, a moment after this node signed it.
const termSkew = time.Hour

// sideRefused is the stopped-line side of a grant this node refuses.
const sideRefused = "refused"

// Approval is this node's signed decision on one application for one of
// its conditional resources: the consumer, the fields, the masks, the
// mode and the term it agreed to. A grant the hub lists for the resource
// is served only when it matches an approval.
type Approval struct {
	Application string            `json:"application"`
	Resource    string            `json:"resource"`
	Provider    string            `json:"provider"`
	Consumer    string            `json:"consumer"`
	Mode        string            `json:"mode"`
	Fields      []string          `json:"fields"`
	Masks       map[string]string `json:"masks,omitempty"`
	Days        int               `json:"days,omitempty"` // 0: no end
	Destroy     bool              `json:"destroy,omitempty"`
	Rate        float64           `json:"rate,omitempty"`
	Quota       int               `json:"quota,omitempty"`
	Approved    time.Time         `json:"approved"`
	SealKeyID   string            `json:"seal_key_id"`
}

// Until is the end of the term approved (zero: no end).
func (ap *Approval) Until() time.Time {
	if ap.Days <= 0 {
		return time.Time{}
	}
	return ap.Approved.AddDate(0, 0, ap.Days)
}

// sign returns the record as stored and its signature.
func (ap *Approval) sign(k *seal.PrivateKey) ([]byte, []byte) {
	ap.SealKeyID = k.KeyID()
	rec, _ := json.Marshal(ap)
	return rec, k.Sign(approvalDomain, rec)
}

// BoundApproval is an approval and the hub grant matched to it ("" until
// the hub lists one).
type BoundApproval struct {
	Approval
	Grant     string `json:"grant,omitempty"`
	Signature []byte `json:"signature"`
}

func (s *State) approval(ctx context.Context, app string) (*BoundApproval, error) {
	aps, err := s.approvalsWhere(ctx, `WHERE application = ?`, app)
	if err != nil || len(aps) == 0 {
		return nil, err
	}
	return &aps[0], nil
}

// Approvals lists this node's approvals, oldest first.
func (s *State) Approvals(ctx context.Context) ([]BoundApproval, error) {
	return s.approvalsWhere(ctx, ``)
}

func (s *State) approvalsWhere(ctx context.Context, where string, args ...any) ([]BoundApproval, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT grant_id, record, signature FROM approvals `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BoundApproval
	for rows.Next() {
		var b BoundApproval
		var rec []byte
		if err := rows.Scan(&b.Grant, &rec, &b.Signature); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(rec, &b.Approval); err != nil {
			return nil, fmt.Errorf("approval record: %w", err)
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Approved.Before(out[j].Approved) })
	return out, rows.Err()
}

func (s *State) putApproval(ctx context.Context, app, grant string, rec, sig []byte) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO approvals (application, grant_id, record, signature) VALUES (?, ?, ?, ?)
		ON CONFLICT (application) DO UPDATE SET grant_id = excluded.grant_id, record = excluded.record, signature = excluded.signature`, app, grant, rec, sig)
	return err
}

func (s *State) dropApproval(ctx context.Context, app string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM approvals WHERE application = ?`, app)
	return err
}

// bindApproval matches an approval to a grant, once: it reports false if
// the approval was matched to a grant already.
func (s *State) bindApproval(ctx context.Context, app, grant string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE approvals SET grant_id = ? WHERE application = ? AND (grant_id = '' OR grant_id = ?)`, grant, app, grant)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// ApproveApplication is the provider's approval: it fetches the
// application as the hub shows it, signs and keeps this node's own record
// of what it approves, then sends the decision. The grant the hub makes
// is served only if it matches that record.
func ApproveApplication(ctx context.Context, cfg Config, id string, d api.Decision) (api.Application, error) {
	d.Approve = true
	hub, ident, err := hubClient(cfg)
	if err != nil {
		return api.Application{}, err
	}
	defer hub.Close()
	var as []api.Application
	if err := call(ctx, hub, http.MethodGet, "/v1/applications", nil, &as); err != nil {
		return api.Application{}, fmt.Errorf("fetch application %s: %w", id, err)
	}
	i := slices.IndexFunc(as, func(a api.Application) bool { return a.ID == id })
	var out api.Application
	if i < 0 || as[i].Provider != ident.NodeID || as[i].State != api.AppProviderReview {
		// Not ours to decide now: the hub refuses it and says why (and
		// records the attempt); nothing is signed.
		err := call(ctx, hub, http.MethodPost, "/v1/applications/"+url.PathEscape(id)+"/decision", d, &out)
		return out, err
	}
	app := as[i]
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return out, err
	}
	defer st.Close()
	prev, err := st.approval(ctx, id)
	if err != nil {
		return out, err
	}
	if prev != nil && prev.Grant != "" {
		return out, fmt.Errorf("application %s is already approved by this node (grant %s): see 'qz-agent grants'", id, prev.Grant)
	}
	ap := Approval{Application: app.ID, Resource: app.Resource, Provider: ident.NodeID, Consumer: app.Consumer, Mode: app.Mode,
		Fields: slices.Clone(app.Fields), Masks: d.Masks, Days: d.Days, Destroy: d.Destroy, Rate: d.Rate, Quota: d.Quota, Approved: time.Now().UTC()}
	rec, sig := ap.sign(ident.Seal)
	// Kept before the hub hears of it: if the answer is lost on the way
	// back, the running agent still matches the grant the hub made.
	if err := st.putApproval(ctx, id, "", rec, sig); err != nil {
		return out, fmt.Errorf("keep the approval: %w", err)
	}
	err = call(ctx, hub, http.MethodPost, "/v1/applications/"+url.PathEscape(id)+"/decision", d, &out)
	var he *hubError
	if errors.As(err, &he) {
		// The hub refused the decision: nothing was approved.
		if prev != nil {
			st.putApproval(ctx, id, prev.Grant, mustJSON(prev.Approval), prev.Signature)
		} else {
			st.dropApproval(ctx, id)
		}
		return out, err
	}
	if err != nil {
		return out, err
	}
	if out.Grant != "" {
		if ok, err := st.bindApproval(ctx, id, out.Grant); err != nil {
			return out, err
		} else if !ok {
			return out, fmt.Errorf("the hub made grant %s for application %s, but this node's approval was matched to another grant already: see 'qz-agent grants'", out.Grant, id)
		}
	}
	return out, nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// resourceEntry is this node's config entry for a resource, or nil.
func resourceEntry(cfg *Config, id string) *Entry {
	for i := range cfg.Resources {
		if cfg.Resources[i].ID == id {
			return &cfg.Resources[i]
		}
	}
	return nil
}

// judge says why this node, as g's provider, does not serve g now, or ""
// when it does. Only the node's own config and approvals count:
//   - a resource without a catalog entry is published as its config
//     declares it, to whoever the hub grants it (it is in no catalog, so
//     no one can apply for it);
//   - unconditional: the grant's mode must be offered and, for a table,
//     its fields named and all in the entry;
//   - conditional: as unconditional, and a dedicated (专用) consumer of the
//     entry, or an approval of this node matched to the grant, with the
//     same consumer, fields, masks, mode, destruction, limits and a term
//     no longer than approved;
//   - none: never.
func judge(g api.GrantInfo, cfg *Config, aps []BoundApproval, now time.Time) string {
	e := resourceEntry(cfg, g.Resource)
	if e == nil {
		return fmt.Sprintf("resource %s is not published by this node (it is not in its config)", g.Resource)
	}
	c := e.Catalog
	if c == nil {
		return ""
	}
	if c.Category == api.ShareNone {
		return fmt.Sprintf("resource %s is not shared (不予共享: category none in this node's config); nothing of it leaves this server under any grant", g.Resource)
	}
	if !slices.Contains(c.Modes, g.Mode) {
		return fmt.Sprintf("resource %s is not offered in mode %s (this node's catalog entry offers: %s)", g.Resource, g.Mode, strings.Join(c.Modes, ", "))
	}
	if e.Kind != "file" {
		if len(g.Fields) == 0 {
			return fmt.Sprintf("grant %s names no fields, which would send every column; this node's catalog entry offers: %s", g.ID, entryFields(c))
		}
		for _, f := range g.Fields {
			if !c.HasField(f) {
				return fmt.Sprintf("field %s is not in this node's catalog entry of %s (it offers: %s)", f, g.Resource, entryFields(c))
			}
		}
	}
	if c.Category != api.ShareConditional || slices.Contains(c.Dedicated, g.Consumer) {
		return ""
	}
	i := slices.IndexFunc(aps, func(ap BoundApproval) bool { return ap.Grant == g.ID })
	if i < 0 {
		return fmt.Sprintf("resource %s is conditional (有条件共享) and this node has approved no application matching grant %s (consumer %s, mode %s, fields %s): the consumer applies, and this node approves with 'qz-agent approve'",
			g.Resource, g.ID, g.Consumer, g.Mode, strings.Join(g.Fields, ","))
	}
	ap := &aps[i].Approval
	if why := differs(g, ap); why != "" {
		return fmt.Sprintf("grant %s differs from this node's approval of application %s: %s", g.ID, ap.Application, why)
	}
	if until := ap.Until(); !until.IsZero() {
		switch {
		case g.Expires.IsZero():
			return fmt.Sprintf("grant %s has no end, but this node approved application %s for %d days, to %s", g.ID, ap.Application, ap.Days, cst(until))
		case g.Expires.After(until.Add(termSkew)):
			return fmt.Sprintf("grant %s ends %s, after the end this node approved for application %s (%s)", g.ID, cst(g.Expires), ap.Application, cst(until))
		case !now.Before(until):
			return fmt.Sprintf("this node's approval of application %s ended at %s", ap.Application, cst(until))
		}
	}
	return ""
}

// differs names the first way g departs from what ap approved, or "".
func differs(g api.GrantInfo, ap *Approval) string {
	fields := func(fs []string) string { s := slices.Clone(fs); slices.Sort(s); return strings.Join(s, ",") }
	switch {
	case g.Resource != ap.Resource:
		return fmt.Sprintf("resource %s, approved %s", g.Resource, ap.Resource)
	case g.Consumer != ap.Consumer:
		return fmt.Sprintf("consumer %s, approved %s", g.Consumer, ap.Consumer)
	case g.Mode != ap.Mode:
		return fmt.Sprintf("mode %s, approved %s", g.Mode, ap.Mode)
	case fields(g.Fields) != fields(ap.Fields):
		return fmt.Sprintf("fields %s, approved %s", fields(g.Fields), fields(ap.Fields))
	case !maps.Equal(g.Masks, ap.Masks):
		return fmt.Sprintf("masks %s, approved %s", masksText(g.Masks), masksText(ap.Masks))
	case ap.Destroy && !g.Destroy:
		return "no destruction at its end, approved with destruction"
	// 0 in an approval means the hub's defaults, which the hub lists.
	case ap.Rate != 0 && g.Rate != ap.Rate || ap.Quota != 0 && g.Quota != ap.Quota:
		return fmt.Sprintf("rate %g and quota %d, approved %g and %d", g.Rate, g.Quota, ap.Rate, ap.Quota)
	}
	return ""
}

func masksText(m map[string]string) string {
	if len(m) == 0 {
		return "none"
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return strings.Join(out, " ")
}

func entryFields(c *api.CatalogEntry) string {
	var n []string
	for _, f := range c.Fields {
		n = append(n, f.Name)
	}
	return strings.Join(n, ", ")
}

func cst(t time.Time) string { return t.In(calendar.CST).Format("2006-01-02 15:04 CST") }

// refusal is why this node does not serve g, its own grant, now ("" when
// it does). The caller holds a.mu.
func (a *Agent) refusal(g api.GrantInfo) string {
	return judge(g, a.config(), a.approvals, time.Now())
}

// matchApprovals matches this node's approvals not yet matched to a grant
// with the grants of gs they describe, oldest approval first, one grant
// each: how an approval whose grant ID never came back (an answer lost on
// the way) still finds its grant, and why a second grant the hub makes
// for the same decision finds none.
func (a *Agent) matchApprovals(ctx context.Context, gs []api.GrantInfo) []BoundApproval {
	aps, err := a.state.Approvals(ctx)
	if err != nil {
		a.log.Error("cannot read this node's approvals; conditional grants are refused until it can", "err", err)
		return nil
	}
	bound := map[string]bool{}
	for _, ap := range aps {
		bound[ap.Grant] = true
	}
	for i := range aps {
		if aps[i].Grant != "" {
			continue
		}
		for _, g := range gs {
			if g.Provider != a.id.NodeID || !g.Active || bound[g.ID] || differs(g, &aps[i].Approval) != "" {
				continue
			}
			if ok, err := a.state.bindApproval(ctx, aps[i].Application, g.ID); err != nil || !ok {
				continue
			}
			aps[i].Grant, bound[g.ID] = g.ID, true
			a.log.Info("approval matched to its grant", "application", aps[i].Application, "grant", g.ID)
			break
		}
	}
	return aps
}

// reviewGrants shows and reports the grants this node refuses: each as a
// stopped line in qz-agent status, logged and reported to the hub once per
// reason; a line clears when its grant is served again or is gone.
func (a *Agent) reviewGrants(ctx context.Context) {
	a.mu.Lock()
	refused := map[string]string{}
	for _, g := range a.grants {
		if g.Provider == a.id.NodeID && g.Active {
			if why := a.refusal(g); why != "" {
				refused[g.ID] = why
			}
		}
	}
	a.mu.Unlock()
	stopped := map[string]string{}
	if ls, err := a.state.Stopped(); err == nil {
		for _, l := range ls {
			if l.Side == sideRefused {
				stopped[l.Grant] = l.Reason
			}
		}
	}
	for id := range stopped {
		if refused[id] == "" {
			a.state.clearStopped(id, sideRefused)
			a.state.db.ExecContext(ctx, `DELETE FROM kv WHERE scope = 'refused' AND key = ?`, id)
			a.log.Info("grant no longer refused", "grant", id)
		}
	}
	reported := a.state.view("refused")
	for _, id := range slices.Sorted(maps.Keys(refused)) {
		why := refused[id]
		if stopped[id] != why {
			a.state.setStopped(id, sideRefused, why)
			a.log.Warn("grant refused: this node does not serve it", "grant", id, "reason", why)
		}
		if old, ok, _ := reported.Get(id); ok && string(old) == why {
			continue
		}
		if err := a.call(ctx, http.MethodPost, "/v1/refusals", api.GrantRefusal{Grant: id, Reason: why}, nil); err != nil {
			a.log.Warn("cannot report a refused grant to the hub yet; retrying", "grant", id, "err", err)
			continue
		}
		a.state.tx(ctx, func(tx *sql.Tx) error {
			_, err := tx.Exec(`INSERT INTO kv (scope, key, value) VALUES ('refused', ?, ?) ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value`, id, []byte(why))
			return err
		})
	}
}

// GrantLine is a grant as this node last heard it from the hub, and what
// this node makes of it.
type GrantLine struct {
	api.GrantInfo
	Role    string `json:"role"`              // provider or consumer
	Serving bool   `json:"serving,omitempty"` // provider: this node serves it
	Refusal string `json:"refusal,omitempty"` // provider: why it does not
	// Approval is this node's approval the grant was matched to.
	Approval string `json:"approval,omitempty"`
}

// GrantsReport is what qz-agent grants prints.
type GrantsReport struct {
	Node      string          `json:"node"`
	Approvals []BoundApproval `json:"approvals"`
	Grants    []GrantLine     `json:"grants"`
}

// ReadGrants reads this node's approvals and the grants it last heard of
// from its state, judging each grant it provides with its config; it
// works while the agent runs.
func ReadGrants(ctx context.Context, cfg Config) (*GrantsReport, error) {
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return nil, err
	}
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	r := &GrantsReport{Node: id.NodeID}
	if r.Approvals, err = st.Approvals(ctx); err != nil {
		return nil, err
	}
	gs, err := st.loadGrants()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, g := range gs {
		l := GrantLine{GrantInfo: g, Role: "consumer"}
		if g.Provider == id.NodeID {
			l.Role = "provider"
			if i := slices.IndexFunc(r.Approvals, func(ap BoundApproval) bool { return ap.Grant == g.ID }); i >= 0 {
				l.Approval = r.Approvals[i].Application
			}
			switch {
			case !g.Active:
				l.Refusal = "ended at the hub"
			case !g.Expires.IsZero() && !now.Before(g.Expires):
				l.Refusal = "expired"
			default:
				l.Refusal = judge(g, &cfg, r.Approvals, now)
				l.Serving = l.Refusal == ""
			}
		}
		r.Grants = append(r.Grants, l)
	}
	return r, nil
}

func printGrants(w io.Writer, r *GrantsReport, asJSON bool) error {
	if asJSON {
		return printJSON(w, r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APPROVED BY THIS NODE\tRESOURCE\tCONSUMER\tMODE\tFIELDS\tMASKS\tTERM\tAPPROVED (CST)\tGRANT")
	for _, ap := range r.Approvals {
		term := "no end"
		if u := ap.Until(); !u.IsZero() {
			term = fmt.Sprintf("%d days, to %s", ap.Days, u.In(calendar.CST).Format(time.DateOnly))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ap.Application, ap.Resource, ap.Consumer, ap.Mode, strings.Join(ap.Fields, ","),
			masksText(ap.Masks), term, ap.Approved.In(calendar.CST).Format(time.DateTime), orDash(ap.Grant))
	}
	if len(r.Approvals) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	fmt.Fprintln(tw, "\nHUB GRANT\tROLE\tRESOURCE\tCONSUMER\tMODE\tFIELDS\tHERE")
	for _, l := range r.Grants {
		here := "receiving"
		switch {
		case l.Role == "consumer" && !l.Active:
			here = "ended"
		case l.Serving && l.Approval != "":
			here = "serving (approval " + l.Approval + ")"
		case l.Serving:
			here = "serving"
		case l.Role == "provider":
			here = "REFUSED: " + l.Refusal
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.ID, l.Role, l.Resource, l.Consumer, l.Mode, orDash(strings.Join(l.Fields, ",")), here)
	}
	return tw.Flush()
}
