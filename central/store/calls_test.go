package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/sqlitedb"
)

// checkChain fails the test unless the audit log's hash chain holds.
func checkChain(t *testing.T, s *SQLite) []AuditRecord {
	t.Helper()
	recs, err := s.AuditLog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	prev := ""
	for i, r := range recs {
		if r.Seq != int64(i+1) || r.Prev != prev || AuditHash(r) != r.Hash {
			t.Fatalf("audit record %d breaks the chain: %+v", i+1, r)
		}
		prev = r.Hash
	}
	return recs
}

// TestRecordCalls: records of every status are written with one audit
// record each, listed newest first for either side, filtered by grant; a
// grant's count leaves out refusals and calls before the day began; the
// audit chain still holds and no record carries a parameter value.
func TestRecordCalls(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for _, n := range []string{"gaj", "mzj", "wjw"} {
		s.AddNode(ctx, n, n, "h-"+n, time.Now().Add(time.Hour))
	}
	s.RegisterResource(ctx, Resource{ID: "gaj.hukou", Provider: "gaj", Kind: "mysql"})
	day := time.Date(2026, 11, 2, 0, 0, 0, 0, time.FixedZone("CST", 8*3600))
	at := func(min int) time.Time { return day.Add(time.Duration(min) * time.Minute) }
	rec := func(id, grant, consumer, status string, asked time.Time) api.CallRecord {
		r := api.CallRecord{ID: id, Grant: grant, Resource: "gaj.hukou", Call: "by_id", Mode: api.ModeVerify, Provider: "gaj",
			Consumer: consumer, Asked: asked, Status: status, TookMS: 1.5}
		if status == api.CallAnswered {
			r.Receipt = []byte(`{"id":"` + id + `"}`)
		} else {
			r.Reason = "why " + id
		}
		return r
	}
	recs := []api.CallRecord{
		rec("c1", "g1", "mzj", api.CallAnswered, at(-1)), // yesterday
		rec("c2", "g1", "mzj", api.CallAnswered, at(1)),
		rec("c3", "g1", "mzj", api.CallRefused, at(2)),
		rec("c4", "g1", "mzj", api.CallFailed, at(3)),
		rec("c5", "g1", "mzj", api.CallTimeout, at(4)),
		rec("c6", "g2", "wjw", api.CallAnswered, at(5)),
		rec("c7", "", "wjw", api.CallRefused, at(6)),
	}
	recs[6].Provider = ""
	if err := s.RecordCalls(ctx, recs[:3]); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCalls(ctx, recs[3:]); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCalls(ctx, recs[:1]); err == nil {
		t.Error("a call recorded twice was accepted")
	}
	ids := func(rs []api.CallRecord) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return strings.Join(out, ",")
	}
	for _, c := range []struct {
		node, grant string
		limit       int
		want        string
	}{
		{"mzj", "", 0, "c5,c4,c3,c2,c1"},
		{"gaj", "", 0, "c6,c5,c4,c3,c2,c1"},
		{"wjw", "", 0, "c7,c6"},
		{"gaj", "", 2, "c6,c5"},
		{"mzj", "g2", 0, ""},
		{"wjw", "g2", 0, "c6"},
		{"", "g1", 3, "c5,c4,c3"},
		{"", "", 0, "c7,c6,c5,c4,c3,c2,c1"},
		{"nobody", "", 0, ""},
	} {
		got, err := s.Calls(ctx, c.node, c.grant, c.limit)
		if err != nil {
			t.Fatal(err)
		}
		if ids(got) != c.want {
			t.Errorf("Calls(%q, %q, %d) = %s, want %s", c.node, c.grant, c.limit, ids(got), c.want)
		}
	}
	got, _ := s.Calls(ctx, "mzj", "", 5)
	if r := got[3]; r.Grant != "g1" || r.Status != api.CallAnswered || string(r.Receipt) != `{"id":"c2"}` || !r.Asked.Equal(at(1)) || r.TookMS != 1.5 || r.Provider != "gaj" {
		t.Errorf("record read back: %+v", r)
	}
	if r := got[2]; r.Receipt != nil || r.Reason != "why c3" {
		t.Errorf("refusal read back: %+v", r)
	}
	// Today (CST) g1 has c2 answered, c4 failed, c5 timed out; c3 was refused.
	if n, err := s.CallCount(ctx, "g1", day); err != nil || n != 3 {
		t.Errorf("CallCount(g1, today) = %d, %v; want 3", n, err)
	}
	if n, _ := s.CallCount(ctx, "g1", day.Add(-time.Hour)); n != 4 {
		t.Errorf("CallCount(g1, from yesterday 23:00) = %d; want 4", n)
	}
	if n, _ := s.CallCount(ctx, "g1", at(1).Add(time.Nanosecond)); n != 2 {
		t.Errorf("CallCount(g1, just after c2) = %d; want 2", n)
	}
	audit := checkChain(t, s)
	actions := map[string]string{}
	for _, r := range audit {
		if strings.HasPrefix(r.Action, "call.") {
			actions[r.Subject] = r.Actor + " " + r.Action
			if !strings.Contains(r.Detail, "resource=gaj.hukou call=by_id") {
				t.Errorf("audit detail of %s: %s", r.Subject, r.Detail)
			}
		}
	}
	want := map[string]string{"c1": "mzj call.verify", "c2": "mzj call.verify", "c3": "mzj call.refused", "c4": "mzj call.failed",
		"c5": "mzj call.timeout", "c6": "wjw call.verify", "c7": "wjw call.refused"}
	if fmt.Sprint(actions) != fmt.Sprint(want) {
		t.Errorf("audit records of the calls: %v, want %v", actions, want)
	}
}

// TestGrantLimits: a grant's rate and quota are stored and read back; only
// the provider sets them, in its approval of a query or verify
// application; negative values and limits on a batch grant are refused.
func TestGrantLimits(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for _, n := range []string{"gaj", "mzj", "wjw"} {
		s.AddNode(ctx, n, n, "h-"+n, time.Now().Add(time.Hour))
	}
	s.RegisterResource(ctx, Resource{ID: "gaj.hukou", Provider: "gaj", Kind: "mysql"})
	e := entry("户籍")
	e.Modes = []string{api.ModeBatch, api.ModeVerify}
	if _, _, err := s.SubmitCatalog(ctx, "gaj", e, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReviewCatalog(ctx, "gaj.hukou", 1, true, "", "operator"); err != nil {
		t.Fatal(err)
	}
	g := Grant{ID: "g-v", Resource: "gaj.hukou", Provider: "gaj", Consumer: "wjw", Mode: api.ModeVerify, Rate: 2.5, Quota: 300}
	for _, bad := range []Grant{
		{ID: "g-neg", Resource: "gaj.hukou", Provider: "gaj", Consumer: "wjw", Mode: api.ModeVerify, Rate: -1},
		{ID: "g-negq", Resource: "gaj.hukou", Provider: "gaj", Consumer: "wjw", Mode: api.ModeQuery, Quota: -1},
		{ID: "g-batch", Resource: "gaj.hukou", Provider: "gaj", Consumer: "wjw", Mode: api.ModeBatch, Rate: 5},
	} {
		if err := s.AddGrant(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("grant %s with rate %g quota %d in mode %s: %v, want ErrInvalid", bad.ID, bad.Rate, bad.Quota, bad.Mode, err)
		}
	}
	if err := s.AddGrant(ctx, g); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Grant(ctx, "g-v"); err != nil || got.Rate != 2.5 || got.Quota != 300 {
		t.Errorf("grant read back: %+v %v", got, err)
	}
	// One active grant per resource and mode: a batch grant may stand
	// beside the verify grant, a second verify grant may not.
	if err := s.AddGrant(ctx, Grant{ID: "g-v2", Resource: "gaj.hukou", Provider: "gaj", Consumer: "wjw", Mode: api.ModeVerify}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "already holds grant g-v") {
		t.Errorf("a second verify grant: %v", err)
	}
	if err := s.AddGrant(ctx, Grant{ID: "g-b", Resource: "gaj.hukou", Provider: "gaj", Consumer: "wjw", Mode: api.ModeBatch}); err != nil {
		t.Errorf("a batch grant beside the verify grant: %v", err)
	}

	a, err := s.SubmitApplication(ctx, "mzj", api.ApplicationRequest{Resource: "gaj.hukou", Fields: []string{"姓名"}, Mode: api.ModeVerify, Purpose: "核验"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true, Rate: 5}, time.Now(), 0); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "provider's to set") {
		t.Errorf("the hub sets a rate: %v", err)
	}
	if _, err := s.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Approve: true, Quota: -5}, time.Time{}, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("a negative quota: %v", err)
	}
	a, err = s.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Approve: true, Rate: 0.5, Quota: 1000}, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Grant(ctx, a.Grant); err != nil || got.Rate != 0.5 || got.Quota != 1000 {
		t.Errorf("grant from the application: %+v %v", got, err)
	}
	audit := checkChain(t, s)
	found := false
	for _, r := range audit {
		if r.Action == "grant.add" && r.Subject == a.Grant {
			found = strings.Contains(r.Detail, "rate=0.5 quota=1000")
		}
	}
	if !found {
		t.Error("the grant.add audit record does not name the rate and quota")
	}
}

// TestGrantLimitsMigration: a database from before rate and quota gets
// the columns, its grants reading 0 (the hub's defaults).
func TestGrantLimitsMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	old := strings.Replace(strings.Replace(schema[4], ",\n\t\trate REAL NOT NULL DEFAULT 0", "", 1), ",\n\t\tquota INTEGER NOT NULL DEFAULT 0", "", 1)
	if strings.Contains(old, "rate") || !strings.Contains(old, "grants") {
		t.Fatalf("test setup: not the old grants table:\n%s", old)
	}
	db, err := sqlitedb.Open(path, []string{schema[0], schema[3], old})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO nodes (id, name, status, created) VALUES ('p', 'p', 'active', ''), ('c', 'c', 'active', '')`,
		`INSERT INTO resources (id, provider, kind, updated) VALUES ('r', 'p', 'mysql', '')`,
		`INSERT INTO grants (id, resource, provider, consumer, mode, status, created) VALUES ('g-old', 'r', 'p', 'c', 'query', 'active', '2026-01-01T00:00:00Z')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, err := s.Grant(context.Background(), "g-old")
	if err != nil || g.Rate != 0 || g.Quota != 0 {
		t.Fatalf("old grant after the migration: %+v %v", g, err)
	}
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('grants') WHERE name IN ('rate', 'quota')`).Scan(&n)
	if n != 2 {
		t.Errorf("%d of the rate and quota columns added", n)
	}
}
