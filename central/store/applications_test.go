package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// workflow sets up a provider with three approved catalog entries (one per
// share category) and two consumers, one of them dedicated.
func workflow(t *testing.T) (*SQLite, context.Context) {
	t.Helper()
	ctx := context.Background()
	s := open(t)
	for _, n := range []string{"gaj", "mzj", "wjw"} {
		if err := s.AddNode(ctx, n, n, "h-"+n, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ id, cat string }{{"gaj.hukou", api.ShareConditional}, {"gaj.open", api.ShareUnconditional}, {"gaj.secret", api.ShareNone}} {
		if err := s.RegisterResource(ctx, Resource{ID: c.id, Provider: "gaj", Kind: "mysql"}); err != nil {
			t.Fatal(err)
		}
		e := entry(c.id)
		e.Resource, e.Category, e.Dedicated = c.id, c.cat, []string{"wjw"}
		e.LegalBasis = "《保密法》"
		if _, _, err := s.SubmitCatalog(ctx, "gaj", e, time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ReviewCatalog(ctx, c.id, 1, true, "", "operator"); err != nil {
			t.Fatal(err)
		}
	}
	return s, ctx
}

func req(resource string) api.ApplicationRequest {
	return api.ApplicationRequest{Resource: resource, Fields: []string{"身份证号"}, Mode: api.ModeBatch, Purpose: "低保审核", Scenario: "窗口办理"}
}

func states(a api.Application) string {
	var s []string
	for _, st := range a.Steps {
		s = append(s, st.State)
	}
	return strings.Join(s, " → ")
}

func TestApplicationConditional(t *testing.T) {
	s, ctx := workflow(t)
	hubDue := time.Date(2026, 11, 25, 16, 0, 0, 0, time.UTC)
	a, err := s.SubmitApplication(ctx, "mzj", req("gaj.hukou"), hubDue)
	if err != nil || a.State != api.AppHubReview || !a.Deadline.Equal(hubDue) || a.Provider != "gaj" {
		t.Fatalf("submit: %+v %v", a, err)
	}
	if _, err := s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Approve: true}, time.Time{}, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("the provider decides before the hub did: %v", err)
	}
	provDue := hubDue.Add(5 * 24 * time.Hour)
	a, err = s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, provDue, 1)
	if err != nil || a.State != api.AppProviderReview || !a.Deadline.Equal(provDue) {
		t.Fatalf("hub approve: %+v %v", a, err)
	}
	if _, err := s.DecideApplication(ctx, a.ID, "wjw", false, api.Decision{Approve: true}, time.Time{}, 0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not the provider") {
		t.Fatalf("another department approves: %v", err)
	}
	if _, err := s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{}, time.Time{}, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reject without reason: %v", err)
	}
	a, err = s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Approve: true}, time.Time{}, 0)
	if err != nil || a.State != api.AppApproved || a.Grant == "" {
		t.Fatalf("provider approve: %+v %v", a, err)
	}
	if got := states(a); got != "submitted → hub_review → provider_review → approved" {
		t.Fatalf("history: %s", got)
	}
	if a.Steps[2].Late != 1 {
		t.Fatalf("the hub's late decision is not recorded: %+v", a.Steps[2])
	}
	g, err := s.Grant(ctx, a.Grant)
	if err != nil || g.Application != a.ID || strings.Join(g.Fields, ",") != "身份证号" || g.Consumer != "mzj" || g.Status != GrantActive {
		t.Fatalf("grant: %+v %v", g, err)
	}
	if err := s.RevokeGrant(ctx, a.Grant, false); err != nil {
		t.Fatal(err)
	}
	if a, _ = s.Application(ctx, a.ID); a.State != api.AppRevoked {
		t.Fatalf("after revocation: %s", a.State)
	}
}

func TestApplicationPaths(t *testing.T) {
	s, ctx := workflow(t)
	// Unconditional: the hub's approval is enough.
	a, _ := s.SubmitApplication(ctx, "mzj", req("gaj.open"), time.Now())
	a, err := s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0)
	if err != nil || a.State != api.AppApproved || states(a) != "submitted → hub_review → approved" {
		t.Fatalf("unconditional: %+v %v", a, err)
	}
	// Dedicated: approved at once.
	a, err = s.SubmitApplication(ctx, "wjw", req("gaj.hukou"), time.Now())
	if err != nil || a.State != api.AppApproved || a.Grant == "" {
		t.Fatalf("dedicated: %+v %v", a, err)
	}
	// Rejected by the hub, with a reason.
	a, _ = s.SubmitApplication(ctx, "mzj", req("gaj.hukou"), time.Now())
	a, err = s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Reason: "用途与职责不符"}, time.Now(), 0)
	if err != nil || a.State != api.AppRejected || a.Reason != "用途与职责不符" || a.Grant != "" {
		t.Fatalf("hub reject: %+v %v", a, err)
	}
	// Rejected by the provider.
	a, _ = s.SubmitApplication(ctx, "mzj", req("gaj.hukou"), time.Now())
	s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0)
	a, err = s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Reason: "超出共享范围"}, time.Now(), 0)
	if err != nil || a.State != api.AppRejected || states(a) != "submitted → hub_review → provider_review → rejected" {
		t.Fatalf("provider reject: %+v %v", a, err)
	}
	// Refusals.
	for _, c := range []struct {
		edit func(*api.ApplicationRequest)
		by   string
		want string
	}{
		{func(r *api.ApplicationRequest) { r.Resource = "gaj.secret" }, "mzj", "not shared (不予共享) under 《保密法》"},
		{func(r *api.ApplicationRequest) { r.Resource = "gaj.nothing" }, "mzj", "not in the catalog"},
		{func(r *api.ApplicationRequest) { r.Fields = []string{"婚姻状况"} }, "mzj", `field "婚姻状况" is not in the catalog entry`},
		{func(r *api.ApplicationRequest) { r.Mode = api.ModeQuery }, "mzj", `not offered in mode "query"`},
		{func(r *api.ApplicationRequest) { r.Purpose = "" }, "mzj", "purpose"},
		{func(r *api.ApplicationRequest) {}, "gaj", "provides gaj.hukou itself"},
	} {
		r := req("gaj.hukou")
		c.edit(&r)
		if _, err := s.SubmitApplication(ctx, c.by, r, time.Now()); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want %q, got %v", c.want, err)
		}
	}
}

// TestApplicationRechecked: an approval checks the catalog as it is now,
// and a consumer never holds two active grants of one resource.
func TestApplicationRechecked(t *testing.T) {
	s, ctx := workflow(t)
	a, err := s.SubmitApplication(ctx, "mzj", req("gaj.hukou"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e := entry("gaj.hukou")
	e.Category, e.LegalBasis = api.ShareNone, "《保密法》"
	s.SubmitCatalog(ctx, "gaj", e, time.Now())
	s.ReviewCatalog(ctx, "gaj.hukou", 2, true, "", "operator")
	if _, err := s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "catalog changed") {
		t.Fatalf("approval after the resource became none: %v", err)
	}
	b, _ := s.SubmitApplication(ctx, "mzj", req("gaj.open"), time.Now())
	c, _ := s.SubmitApplication(ctx, "mzj", req("gaj.open"), time.Now())
	if _, err := s.DecideApplication(ctx, b.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DecideApplication(ctx, c.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "already holds grant") {
		t.Fatalf("a second grant: %v", err)
	}
	if _, err := s.SubmitApplication(ctx, "mzj", req("gaj.open"), time.Now()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("applying while holding a grant: %v", err)
	}
}

// TestApplicationTerm: the provider's approval sets the grant's term and
// its destruction; an application whose grant ran out shows as expired.
func TestApplicationTerm(t *testing.T) {
	s, ctx := workflow(t)
	a, _ := s.SubmitApplication(ctx, "mzj", req("gaj.hukou"), time.Now())
	if _, err := s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true, Days: 30}, time.Now(), 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("the hub set a term: %v", err)
	}
	s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0)
	a, err := s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Approve: true, Days: 30, Destroy: true}, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := s.Grant(ctx, a.Grant)
	if !g.Destroy || time.Until(g.Expires) < 29*24*time.Hour || time.Until(g.Expires) > 31*24*time.Hour {
		t.Fatalf("grant: destroy %v expires %s", g.Destroy, g.Expires)
	}
	if a.State != api.AppApproved {
		t.Fatalf("state %s", a.State)
	}
	s.db.Exec(`UPDATE grants SET expires = ? WHERE id = ?`, ts(time.Now().Add(-time.Minute)), a.Grant)
	if a, _ = s.Application(ctx, a.ID); a.State != api.AppExpired {
		t.Fatalf("after the term: %s", a.State)
	}
}
