package central

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/cli"
	"github.com/qianzhi/qianzhi/pkg/receipt"
)

// workflowError answers a refused workflow request with its reason, and
// audits the refusal: bad input is recorded like any other step.
func (h *Hub) workflowError(w http.ResponseWriter, r *http.Request, action, subject string, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, store.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, store.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	default:
		h.internal(w, "application", err)
		return
	}
	h.store.Audit(r.Context(), nodeID(r), action, subject, err.Error())
	httpError(w, code, err.Error())
}

func (h *Hub) submitApplication(w http.ResponseWriter, r *http.Request) {
	var req api.ApplicationRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		h.store.Audit(r.Context(), nodeID(r), "application.refuse", "", "malformed request: "+err.Error())
		httpError(w, http.StatusBadRequest, "malformed application")
		return
	}
	a, err := h.store.SubmitApplication(r.Context(), nodeID(r), req, h.calendar().Deadline(h.now(), h.cfg.Deadlines.HubReview))
	if err != nil {
		h.workflowError(w, r, "application.refuse", req.Resource, err)
		return
	}
	h.log.Info("application submitted", "id", a.ID, "resource", a.Resource, "consumer", a.Consumer, "state", a.State)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(a)
}

func (h *Hub) listApplications(w http.ResponseWriter, r *http.Request) {
	as, err := h.store.Applications(r.Context(), nodeID(r))
	if err != nil {
		h.internal(w, "list applications", err)
		return
	}
	if as == nil {
		as = []api.Application{}
	}
	writeJSON(w, as)
}

// decideApplication is the provider's decision, made through its agent:
// its certificate says who it is.
func (h *Hub) decideApplication(w http.ResponseWriter, r *http.Request) {
	var d api.Decision
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&d); err != nil {
		h.store.Audit(r.Context(), nodeID(r), "application.refuse", r.PathValue("id"), "malformed decision: "+err.Error())
		httpError(w, http.StatusBadRequest, "malformed decision")
		return
	}
	id := r.PathValue("id")
	a, err := h.store.Application(r.Context(), id)
	if err == nil && a.Provider != nodeID(r) && a.Consumer != nodeID(r) {
		err = fmt.Errorf("application %s: %w", id, store.ErrNotFound) // not yours: not even its existence
	}
	if err == nil {
		a, err = h.store.DecideApplication(r.Context(), id, nodeID(r), false, d, time.Time{}, h.late(a.Deadline))
	}
	if err != nil {
		h.workflowError(w, r, "application.refuse", id, err)
		return
	}
	writeJSON(w, a)
}

// late is how many working days after deadline now is.
func (h *Hub) late(deadline time.Time) int {
	if deadline.IsZero() {
		return 0
	}
	return h.calendar().WorkdaysLate(deadline, h.now())
}

// applicationCommand runs the operator's application commands: the hub's
// compliance review.
func applicationCommand(ctx context.Context, cfg Config, st store.Store, cmd string, pos []string, state, reason string, w io.Writer) error {
	if cmd == "application list" {
		var states []string
		if state != "" {
			states = strings.Split(state, ",")
		}
		as, err := st.Applications(ctx, "", states...)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tDUE\tRESOURCE\tCONSUMER\tMODE\tFIELDS\tPURPOSE")
		for _, a := range as {
			due := "-"
			if !a.Deadline.IsZero() {
				due = a.Deadline.In(calendar.CST).Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.State, due, a.Resource, a.Consumer, a.Mode, strings.Join(a.Fields, ","), a.Purpose)
		}
		return tw.Flush()
	}
	if err := cli.Want(pos, 1, "qz-central "+cmd+" APPLICATION_ID"); err != nil {
		return err
	}
	a, err := st.Application(ctx, pos[0])
	if err != nil {
		return err
	}
	if cmd == "application show" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(a)
	}
	cal, err := cfg.Calendar()
	if err != nil {
		return err
	}
	now := time.Now()
	late := 0
	if !a.Deadline.IsZero() {
		late = cal.WorkdaysLate(a.Deadline, now)
	}
	d := api.Decision{Approve: cmd == "application approve", Reason: reason}
	a, err = st.DecideApplication(ctx, a.ID, store.Actor(ctx), true, d, cal.Deadline(now, cfg.Deadlines.ProviderReview), late)
	if err != nil {
		st.Audit(ctx, store.Actor(ctx), "application.refuse", pos[0], err.Error())
		return err
	}
	switch a.State {
	case api.AppProviderReview:
		fmt.Fprintf(w, "%s: passed to the provider %s, due by %s\n", a.ID, a.Provider, a.Deadline.In(calendar.CST).Format(time.DateTime))
	case api.AppApproved:
		fmt.Fprintf(w, "%s: approved; grant %s\n", a.ID, a.Grant)
	default:
		fmt.Fprintf(w, "%s: %s (%s)\n", a.ID, a.State, a.Reason)
	}
	return nil
}

// reportOverdue lists the review steps past their deadline.
func reportOverdue(ctx context.Context, cfg Config, st store.Store, w io.Writer) error {
	cal, err := cfg.Calendar()
	if err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tID\tSTEP\tWHO\tDUE\tWORKING DAYS LATE")
	uncovered := false
	due := func(t time.Time) string {
		s := t.In(calendar.CST).Format(time.DateTime)
		if !cal.Covered(t.In(calendar.CST).Year()) {
			uncovered = true
			s += " *"
		}
		return s
	}
	n := 0
	as, err := st.Applications(ctx, "", api.AppHubReview, api.AppProviderReview)
	if err != nil {
		return err
	}
	for _, a := range as {
		if a.Deadline.IsZero() || now.Before(a.Deadline) {
			continue
		}
		who := "hub"
		if a.State == api.AppProviderReview {
			who = a.Provider
		}
		fmt.Fprintf(tw, "application\t%s\t%s\t%s\t%s\t%d\n", a.ID, a.State, who, due(a.Deadline), cal.WorkdaysLate(a.Deadline, now))
		n++
	}
	fs, err := st.Feedback(ctx, "", true)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if now.Before(f.Deadline) {
			continue
		}
		fmt.Fprintf(tw, "feedback\t%s\tanswer\t%s\t%s\t%d\n", f.ID, f.Provider, due(f.Deadline), cal.WorkdaysLate(f.Deadline, now))
		n++
	}
	vs, err := st.CatalogLatest(ctx)
	if err != nil {
		return err
	}
	for _, v := range vs {
		if v.Status != store.CatalogPending || now.Before(v.Deadline) {
			continue
		}
		fmt.Fprintf(tw, "catalog\t%s v%d\tcatalog_review\thub\t%s\t%d\n", v.Entry.Resource, v.Version, due(v.Deadline), cal.WorkdaysLate(v.Deadline, now))
		n++
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d overdue\n", n)
	if uncovered {
		fmt.Fprintf(w, "* counted without an official holiday calendar for that year (plain weekends): add it to %s\n", cfg.HolidaysDir)
	}
	return nil
}

func (h *Hub) submitFeedback(w http.ResponseWriter, r *http.Request) {
	var req api.FeedbackRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		h.store.Audit(r.Context(), nodeID(r), "feedback.refuse", "", "malformed request: "+err.Error())
		httpError(w, http.StatusBadRequest, "malformed feedback")
		return
	}
	f, err := h.store.SubmitFeedback(r.Context(), nodeID(r), req, h.calendar().Deadline(h.now(), h.cfg.Deadlines.Feedback))
	if err != nil {
		h.workflowError(w, r, "feedback.refuse", req.Resource, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(f)
}

func (h *Hub) listFeedback(w http.ResponseWriter, r *http.Request) {
	fs, err := h.store.Feedback(r.Context(), nodeID(r), false)
	if err != nil {
		h.internal(w, "list feedback", err)
		return
	}
	if fs == nil {
		fs = []api.Feedback{}
	}
	writeJSON(w, fs)
}

// answerFeedback is the provider's answer, through its agent.
func (h *Hub) answerFeedback(w http.ResponseWriter, r *http.Request) {
	var a struct {
		Text string `json:"text"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&a); err != nil {
		h.store.Audit(r.Context(), nodeID(r), "feedback.refuse", r.PathValue("id"), "malformed answer: "+err.Error())
		httpError(w, http.StatusBadRequest, "malformed answer")
		return
	}
	id := r.PathValue("id")
	late := 0
	if fs, err := h.store.Feedback(r.Context(), nodeID(r), false); err == nil {
		for _, f := range fs {
			if f.ID == id {
				late = h.late(f.Deadline)
			}
		}
	}
	f, err := h.store.AnswerFeedback(r.Context(), id, nodeID(r), a.Text, late)
	if err != nil {
		h.workflowError(w, r, "feedback.refuse", id, err)
		return
	}
	writeJSON(w, f)
}

// destruction records a consumer's signed statement that it destroyed what
// it received under an ended grant.
func (h *Hub) destruction(w http.ResponseWriter, r *http.Request) {
	me := nodeID(r)
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		httpError(w, http.StatusBadRequest, "unreadable destruction receipt")
		return
	}
	var d receipt.Destruction
	if err := json.Unmarshal(raw, &d); err != nil || d.Consumer != me {
		h.store.Audit(r.Context(), me, "destruction.reject", d.Grant, "malformed or not the sender's")
		httpError(w, http.StatusBadRequest, "malformed destruction receipt")
		return
	}
	pub, err := h.nodeKeys(r.Context(), me)(d.SealKeyID)
	if err == nil {
		err = d.Verify(pub)
	}
	if err == nil {
		var g store.Grant
		if g, err = h.store.Grant(r.Context(), d.Grant); err == nil && (g.Resource != d.Resource || g.Provider != d.Provider) {
			err = errors.New("receipt names another resource or provider than its grant")
		}
	}
	if err != nil {
		h.store.Audit(r.Context(), me, "destruction.reject", d.Grant, err.Error())
		httpError(w, http.StatusUnprocessableEntity, "destruction receipt rejected: "+err.Error())
		return
	}
	if err := h.store.PutDestruction(r.Context(), d.Grant, me, raw); err != nil {
		h.workflowError(w, r, "destruction.reject", d.Grant, err)
		return
	}
	h.log.Info("destruction receipt recorded", "grant", d.Grant, "consumer", me, "what", d.What)
	w.WriteHeader(http.StatusNoContent)
}

// listDestructions lets a node see the destruction receipts of the ended
// grants it takes part in (or of one, with ?grant=), each exactly as the consumer
// signed it: the provider checks the signature itself rather than take the
// hub's word that its data was destroyed.
func (h *Hub) listDestructions(w http.ResponseWriter, r *http.Request) {
	me := nodeID(r)
	want := r.URL.Query().Get("grant")
	gs, err := h.store.GrantsFor(r.Context(), me)
	if err != nil {
		h.internal(w, "list grants", err)
		return
	}
	out := []api.DestructionRecord{}
	for _, g := range gs {
		if !g.Destroy || g.Active(h.now()) || (want != "" && g.ID != want) {
			continue
		}
		raw, at, err := h.store.Destruction(r.Context(), g.ID)
		if err != nil {
			h.internal(w, "load destruction receipt", err)
			return
		}
		out = append(out, api.DestructionRecord{Grant: g.ID, Resource: g.Resource, Provider: g.Provider, Consumer: g.Consumer,
			Status: g.Status, Recorded: at, Receipt: raw})
	}
	writeJSON(w, out)
}
