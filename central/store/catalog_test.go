package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

func entry(name string) api.CatalogEntry {
	return api.CatalogEntry{
		Resource: "gaj.hukou", Name: name, Code: "GA-001", Format: "table", Department: "市公安局",
		Fields:   []api.CatalogField{{Name: "身份证号", Type: "string"}, {Name: "姓名", Type: "string"}},
		Category: api.ShareConditional, Frequency: "daily", Modes: []string{api.ModeBatch}, LegalBasis: "《户口登记条例》",
	}
}

// TestCatalogReview: versions are kept; only approved versions are
// visible; a rejection needs a reason; only the owner submits.
func TestCatalogReview(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for _, n := range []string{"gaj", "other"} {
		if err := s.AddNode(ctx, n, n, "h-"+n, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RegisterResource(ctx, Resource{ID: "gaj.hukou", Provider: "gaj", Kind: "mysql"}); err != nil {
		t.Fatal(err)
	}
	dl := time.Now().Add(72 * time.Hour)
	v, changed, err := s.SubmitCatalog(ctx, "gaj", entry("户籍人口"), dl)
	if err != nil || v != 1 || !changed {
		t.Fatalf("first submit: %d %v %v", v, changed, err)
	}
	if vs, _ := s.CatalogApproved(ctx); len(vs) != 0 {
		t.Fatal("a pending entry is visible")
	}
	if _, err := s.ReviewCatalog(ctx, "gaj.hukou", 1, false, "", "operator"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reject without reason: %v", err)
	}
	if _, err := s.ReviewCatalog(ctx, "gaj.hukou", 2, true, "", "operator"); !errors.Is(err, ErrConflict) {
		t.Fatalf("approving a version that is not the one waiting: %v", err)
	}
	if r, err := s.ReviewCatalog(ctx, "gaj.hukou", 1, true, "", "operator"); err != nil || r.Status != CatalogApproved {
		t.Fatalf("approve: %+v %v", r, err)
	}
	if _, changed, _ := s.SubmitCatalog(ctx, "gaj", entry("户籍人口"), dl); changed {
		t.Fatal("the same entry again made a new version")
	}
	if v, changed, _ := s.SubmitCatalog(ctx, "gaj", entry("户籍人口基本信息"), dl); v != 2 || !changed {
		t.Fatalf("changed entry: version %d changed %v", v, changed)
	}
	vs, _ := s.CatalogApproved(ctx)
	if len(vs) != 1 || vs[0].Version != 1 || vs[0].Entry.Name != "户籍人口" {
		t.Fatalf("while version 2 waits, version 1 stays visible: %+v", vs)
	}
	// The provider changes version 2 while it waits: a new version 3
	// waits instead, and version 2 can no longer be approved unseen.
	if v, changed, _ := s.SubmitCatalog(ctx, "gaj", entry("户籍人口基本信息（修订）"), dl); v != 3 || !changed {
		t.Fatalf("resubmission while pending: version %d", v)
	}
	if _, err := s.ReviewCatalog(ctx, "gaj.hukou", 2, true, "", "operator"); !errors.Is(err, ErrConflict) {
		t.Fatalf("approving the superseded version: %v", err)
	}
	if r, err := s.ReviewCatalog(ctx, "gaj.hukou", 3, false, "字段说明不全", "operator"); err != nil || r.Status != CatalogRejected || r.Reason != "字段说明不全" {
		t.Fatalf("reject: %+v %v", r, err)
	}
	if _, err := s.ReviewCatalog(ctx, "gaj.hukou", 3, true, "", "operator"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nothing pending: %v", err)
	}
	all, _ := s.CatalogVersions(ctx, "gaj.hukou")
	if len(all) != 3 || all[0].Status != CatalogRejected || all[1].Status != CatalogSuperseded || all[2].Status != CatalogApproved {
		t.Fatalf("versions: %+v", all)
	}
	if _, _, err := s.SubmitCatalog(ctx, "other", entry("冒名"), dl); !errors.Is(err, ErrConflict) {
		t.Fatalf("another node's submit: %v", err)
	}
	recs, _ := s.AuditLog(ctx)
	var actions []string
	for _, r := range recs {
		if strings.HasPrefix(r.Action, "catalog.") {
			actions = append(actions, r.Action)
		}
	}
	if strings.Join(actions, " ") != "catalog.submit catalog.approve catalog.submit catalog.submit catalog.reject" {
		t.Fatalf("audited: %v", actions)
	}
}
