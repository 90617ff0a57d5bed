package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

func entry(id, kind, category string, dedicated ...string) Entry {
	e := Entry{Common: connectors.Common{ID: id, Kind: kind}}
	if category != "" {
		e.Catalog = &api.CatalogEntry{Resource: id, Category: category, Modes: []string{api.ModeBatch, api.ModeQuery},
			Fields: []api.CatalogField{{Name: "id_no"}, {Name: "name"}, {Name: "address"}}, Dedicated: dedicated}
	}
	return e
}

// TestJudge: the provider's own check of each grant the hub lists. One
// case per rule; each "refused" case is served when its rule is removed.
func TestJudge(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	cfg := &Config{Resources: []Entry{
		entry("free", "sqlite", ""),
		entry("open", "sqlite", api.ShareUnconditional),
		entry("cond", "sqlite", api.ShareConditional, "dedicated-node"),
		entry("closed", "sqlite", api.ShareNone),
		entry("folder", "file", api.ShareUnconditional),
	}}
	grant := func(resource string, edit ...func(*api.GrantInfo)) api.GrantInfo {
		g := api.GrantInfo{ID: "g-1", Resource: resource, Provider: testProvider, Consumer: testConsumer, Mode: api.ModeBatch,
			Fields: []string{"id_no", "name"}, Masks: map[string]string{"name": "name"}, Active: true, Expires: now.AddDate(0, 0, 30)}
		for _, e := range edit {
			e(&g)
		}
		return g
	}
	approval := BoundApproval{Grant: "g-1", Approval: Approval{Application: "a-1", Resource: "cond", Provider: testProvider, Consumer: testConsumer,
		Mode: api.ModeBatch, Fields: []string{"name", "id_no"}, Masks: map[string]string{"name": "name"}, Days: 30, Approved: now.Add(-time.Minute)}}
	aps := []BoundApproval{approval}
	cases := []struct {
		name  string
		g     api.GrantInfo
		aps   []BoundApproval
		at    time.Time
		wants string // "" served, else a part of the refusal
	}{
		{name: "no catalog entry: as the config publishes it", g: grant("free", func(g *api.GrantInfo) { g.Fields = nil })},
		{name: "unconditional", g: grant("open")},
		{name: "unconditional folder without fields", g: grant("folder", func(g *api.GrantInfo) { g.Fields = nil })},
		{name: "conditional with a matching approval", g: grant("cond"), aps: aps},
		{name: "conditional for a dedicated consumer", g: grant("cond", func(g *api.GrantInfo) { g.Consumer = "dedicated-node" })},
		{name: "conditional, approval with no end, grant with one", g: grant("cond"), aps: []BoundApproval{func() BoundApproval { a := approval; a.Days = 0; return a }()}},

		{name: "not published here", g: grant("elsewhere"), wants: "not published by this node"},
		{name: "none, even approved", g: grant("closed"), aps: []BoundApproval{func() BoundApproval { a := approval; a.Resource = "closed"; return a }()}, wants: "不予共享"},
		{name: "mode not offered", g: grant("open", func(g *api.GrantInfo) { g.Mode = api.ModeVerify }), wants: "not offered in mode verify"},
		{name: "table grant without fields", g: grant("open", func(g *api.GrantInfo) { g.Fields = nil }), wants: "names no fields"},
		{name: "field not in the entry", g: grant("open", func(g *api.GrantInfo) { g.Fields = []string{"id_no", "income"} }), wants: "field income is not in"},
		{name: "conditional without approval", g: grant("cond"), wants: "has approved no application"},
		{name: "approval of another grant", g: grant("cond", func(g *api.GrantInfo) { g.ID = "g-2" }), aps: aps, wants: "has approved no application"},
		{name: "another consumer", g: grant("cond", func(g *api.GrantInfo) { g.Consumer = "wjw" }), aps: aps, wants: "consumer wjw, approved mzj"},
		{name: "another mode", g: grant("cond", func(g *api.GrantInfo) { g.Mode = api.ModeQuery }), aps: aps, wants: "mode query, approved batch"},
		{name: "more fields", g: grant("cond", func(g *api.GrantInfo) { g.Fields = []string{"id_no", "name", "address"} }), aps: aps, wants: "fields address,id_no,name, approved id_no,name"},
		{name: "a mask dropped", g: grant("cond", func(g *api.GrantInfo) { g.Masks = nil }), aps: aps, wants: "masks none, approved name=name"},
		{name: "destruction dropped", g: grant("cond"), aps: []BoundApproval{func() BoundApproval { a := approval; a.Destroy = true; return a }()}, wants: "no destruction"},
		{name: "other limits", g: grant("cond", func(g *api.GrantInfo) { g.Quota = 100000 }), aps: []BoundApproval{func() BoundApproval { a := approval; a.Quota = 50; return a }()}, wants: "quota 100000"},
		{name: "the hub's default limits", g: grant("cond", func(g *api.GrantInfo) { g.Rate, g.Quota = 20, 10000 }), aps: aps},
		{name: "term without end", g: grant("cond", func(g *api.GrantInfo) { g.Expires = time.Time{} }), aps: aps, wants: "has no end"},
		{name: "term longer", g: grant("cond", func(g *api.GrantInfo) { g.Expires = now.AddDate(0, 0, 60) }), aps: aps, wants: "after the end this node approved"},
		{name: "approval ended", g: grant("cond", func(g *api.GrantInfo) { g.Expires = now.Add(30 * time.Minute) }), aps: []BoundApproval{func() BoundApproval {
			a := approval
			a.Approved = now.AddDate(0, 0, -40)
			a.Days = 40
			return a
		}()}, at: now.Add(time.Minute), wants: "approval of application a-1 ended"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			at := now
			if !c.at.IsZero() {
				at = c.at
			}
			got := judge(c.g, cfg, c.aps, at)
			switch {
			case c.wants == "" && got != "":
				t.Errorf("refused: %s", got)
			case c.wants != "" && !strings.Contains(got, c.wants):
				t.Errorf("got %q, want a refusal saying %q", got, c.wants)
			}
		})
	}
}

// TestApprovalsMatched: an approval kept without its grant ID (the hub's
// answer lost) is matched to the grant it describes, and to one grant
// only: a second grant the hub makes for the same decision stays refused.
func TestApprovalsMatched(t *testing.T) {
	st, err := OpenState(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	key, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ap := Approval{Application: "a-1", Resource: "cond", Provider: testProvider, Consumer: testConsumer, Mode: api.ModeBatch,
		Fields: []string{"id_no"}, Approved: time.Now().UTC()}
	rec, sig := ap.sign(key)
	if err := key.Public().Verify(approvalDomain, rec, sig); err != nil {
		t.Fatalf("the approval's signature: %v", err)
	}
	if err := st.putApproval(ctx, ap.Application, "", rec, sig); err != nil {
		t.Fatal(err)
	}
	a := &Agent{state: st, id: &Identity{NodeID: testProvider}, log: slog.New(slog.DiscardHandler)}
	g := api.GrantInfo{ID: "g-1", Resource: "cond", Provider: testProvider, Consumer: testConsumer, Mode: api.ModeBatch, Fields: []string{"id_no"}, Active: true}
	twin := g
	twin.ID = "g-2"
	aps := a.matchApprovals(ctx, []api.GrantInfo{g, twin})
	if len(aps) != 1 || aps[0].Grant != "g-1" {
		t.Fatalf("matched: %+v", aps)
	}
	cfg := &Config{Resources: []Entry{entry("cond", "sqlite", api.ShareConditional)}}
	cfg.Resources[0].Catalog.Fields = []api.CatalogField{{Name: "id_no"}}
	if why := judge(g, cfg, aps, time.Now()); why != "" {
		t.Errorf("g-1 refused: %s", why)
	}
	if why := judge(twin, cfg, aps, time.Now()); why == "" {
		t.Error("the second grant for the same approval is served")
	}
	// The match is kept: a restart finds it.
	again, err := st.Approvals(ctx)
	if err != nil || len(again) != 1 || again[0].Grant != "g-1" {
		t.Fatalf("after reading again: %+v %v", again, err)
	}
}
