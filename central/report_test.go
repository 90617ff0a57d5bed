package central

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
)

// TestAuditExport writes the records of a period as JSON lines and as
// CSV, each with the hashes that let it be checked against the chain.
func TestAuditExport(t *testing.T) {
	at := func(s string) time.Time {
		t, _ := time.Parse(time.RFC3339, s)
		return t
	}
	recs := []store.AuditRecord{
		{Seq: 1, At: at("2026-10-31T15:59:59Z"), Actor: "operator", Action: "node.add", Subject: "a", Detail: "x", Hash: "h1"},
		{Seq: 2, At: at("2026-10-31T16:00:00Z"), Actor: "hub", Action: "grant.add", Subject: "g", Detail: "资源=人口", Prev: "h1", Hash: "h2"}, // Nov 1, 00:00 in Beijing
		{Seq: 3, At: at("2026-11-30T15:59:59Z"), Actor: "b", Action: "batch.receipt", Subject: "g/1", Detail: `with "quotes", commas`, Prev: "h2", Hash: "h3"},
		{Seq: 4, At: at("2026-11-30T16:00:00Z"), Actor: "b", Action: "batch.receipt", Subject: "g/2", Prev: "h3", Hash: "h4"},
	}
	var out bytes.Buffer
	if err := exportAudit(recs, "2026-11-01", "2026-11-30", "jsonl", &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("November in Beijing holds records 2 and 3, got:\n%s", out.String())
	}
	var r struct {
		Seq          int64
		Detail, Prev string
	}
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil || r.Seq != 2 || r.Detail != "资源=人口" || r.Prev != "h1" {
		t.Fatalf("first line %s: %+v %v", lines[0], r, err)
	}
	out.Reset()
	if err := exportAudit(recs, "", "", "csv", &out); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil || len(rows) != 5 || rows[3][5] != `with "quotes", commas` || rows[0][0] != "seq" {
		t.Fatalf("csv: %v %q", err, rows)
	}
	for _, bad := range []struct{ from, to, format, want string }{
		{"2026-13-01", "", "jsonl", "--from"},
		{"2026-11-02", "2026-11-01", "jsonl", "before"},
		{"", "", "xml", "--format"},
	} {
		if err := exportAudit(recs, bad.from, bad.to, bad.format, &out); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: got %v", bad, err)
		}
	}
}

// TestCalendarCommand: an operator adds 2027 by dropping a file into the
// holidays folder; a broken file is reported by config check.
func TestCalendarCommand(t *testing.T) {
	dir := t.TempDir()
	hol := filepath.Join(dir, "holidays")
	os.MkdirAll(hol, 0o755)
	cfg := filepath.Join(dir, "central.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s\nholidays_dir: %s\n", dir, hol)), 0o644)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Run(context.Background(), append(args, "--config", cfg), &out, &out)
		return out.String(), err
	}
	out, err := run("calendar", "2027")
	if err != nil || !strings.Contains(out, "no official calendar") {
		t.Fatalf("2027 before its file: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(hol, "2027.yaml"), []byte("year: 2027\nsource: 测试\nholidays:\n  - name: 元旦\n    off: [2027-01-01]\n"), 0o644)
	out, err = run("calendar", "2027")
	if err != nil || !strings.Contains(out, "2027-01-01  Friday  off: 元旦") || !strings.Contains(out, "260 working days") {
		t.Fatalf("2027 with its file: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(hol, "2028.yaml"), []byte("year: 2028\nholidays:\n  - name: x\n    work: [2028-01-03]\n    off: [2028-01-01]\n"), 0o644)
	if _, err := run("config", "check"); err == nil || !strings.Contains(err.Error(), "2028.yaml") {
		t.Fatalf("config check must report the broken calendar file: %v", err)
	}
}

// TestReportOverdue lists an application whose hub review is past due and
// a catalog entry waiting past its deadline, with working days late.
func TestReportOverdue(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.StateDir, cfg.HolidaysDir = dir, filepath.Join(dir, "none")
	st, err := store.OpenSQLite(filepath.Join(dir, "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, n := range []string{"gaj", "mzj"} {
		st.AddNode(ctx, n, n, "h"+n, time.Now().Add(time.Hour))
	}
	for _, r := range []string{"gaj.hukou", "gaj.late"} {
		st.RegisterResource(ctx, store.Resource{ID: r, Provider: "gaj", Kind: "file"})
	}
	e := api.CatalogEntry{Resource: "gaj.hukou", Name: "户籍", Code: "1", Format: "file", Department: "公安局",
		Fields: []api.CatalogField{{Name: "姓名", Type: "string"}}, Category: api.ShareUnconditional, Frequency: "daily", Modes: []string{"batch"}}
	st.SubmitCatalog(ctx, "gaj", e, time.Now())
	st.ReviewCatalog(ctx, "gaj.hukou", 1, true, "", "operator")
	e.Resource = "gaj.late"
	st.SubmitCatalog(ctx, "gaj", e, time.Now().Add(-10*24*time.Hour))
	a, err := st.SubmitApplication(ctx, "mzj", api.ApplicationRequest{Resource: "gaj.hukou", Fields: []string{"姓名"}, Mode: "batch", Purpose: "p"}, time.Now().Add(-7*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := st.SubmitApplication(ctx, "mzj", api.ApplicationRequest{Resource: "gaj.hukou", Fields: []string{"姓名"}, Mode: "batch", Purpose: "p"}, time.Now().Add(24*time.Hour))
	if _, err := st.DecideApplication(ctx, b.ID, "operator", true, api.Decision{Approve: true}, time.Time{}, 0); err != nil {
		t.Fatal(err)
	}
	fb, err := st.SubmitFeedback(ctx, "mzj", api.FeedbackRequest{Resource: "gaj.hukou", Record: "id=1", Field: "姓名", Problem: "错字"}, time.Now().Add(-3*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	old, err := st.SubmitFeedback(ctx, "mzj", api.FeedbackRequest{Resource: "gaj.hukou", Record: "id=2", Field: "姓名", Problem: "错字"}, time.Date(2025, 12, 30, 16, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := reportOverdue(ctx, cfg, st, &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.Contains(s, old.ID) || !strings.Contains(s, "2025-12-31 00:00:00 *") || !strings.Contains(s, "without an official holiday calendar") {
		t.Fatalf("a deadline in a year without a calendar is not flagged:\n%s", s)
	}
	if !strings.Contains(s, a.ID) || !strings.Contains(s, "gaj.late v1") || !strings.Contains(s, fb.ID) || !strings.Contains(s, "4 overdue") {
		t.Fatalf("overdue report:\n%s", s)
	}
	// A week late is at least 4 working days late, whatever the holidays.
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, a.ID) {
			f := strings.Fields(line)
			if n, err := strconv.Atoi(f[len(f)-1]); err != nil || n < 4 || n > 7 {
				t.Errorf("working days late: %s", line)
			}
		}
	}
}

// TestDepartmentReport counts, per department, what it publishes, how
// fresh it is, what it provided and what was applied, and how it kept its
// deadlines.
func TestDepartmentReport(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.AddNode(ctx, "gaj", "市公安局", "h1", time.Now().Add(time.Hour))
	st.AddNode(ctx, "mzj", "市民政局", "h2", time.Now().Add(time.Hour))
	for _, r := range []string{"gaj.hukou", "gaj.old"} {
		st.RegisterResource(ctx, store.Resource{ID: r, Provider: "gaj", Kind: "mysql"})
		e := api.CatalogEntry{Resource: r, Name: r, Code: r, Format: "table", Department: "市公安局", Fields: []api.CatalogField{{Name: "姓名", Type: "string"}},
			Category: api.ShareConditional, LegalBasis: "x", Frequency: "daily", Modes: []string{"batch"}}
		st.SubmitCatalog(ctx, "gaj", e, time.Now())
		st.ReviewCatalog(ctx, r, 1, true, "", "operator")
	}
	a, _ := st.SubmitApplication(ctx, "mzj", api.ApplicationRequest{Resource: "gaj.hukou", Fields: []string{"姓名"}, Mode: "batch", Purpose: "p"}, time.Now())
	st.DecideApplication(ctx, a.ID, "operator", true, api.Decision{Approve: true}, time.Now(), 0)
	a, err = st.DecideApplication(ctx, a.ID, "gaj", false, api.Decision{Approve: true}, time.Time{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		st.PutBatch(ctx, store.Batch{Grant: a.Grant, Sequence: seq, Resource: "gaj.hukou", Provider: "gaj", Consumer: "mzj", Size: 1000, Rows: 10, Digest: fmt.Sprint(seq)})
	}
	st.PutReceipt(ctx, a.Grant, 1, []byte("{}"), time.Now())
	st.SubmitFeedback(ctx, "mzj", api.FeedbackRequest{Resource: "gaj.hukou", Record: "id=1", Problem: "x"}, time.Now().Add(-time.Hour))
	lines, err := departmentReport(ctx, st, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	gaj, mzj := lines[0], lines[1]
	if gaj.Node != "gaj" || gaj.Resources != 2 || gaj.InCatalog != 2 || strings.Join(gaj.Stale, ",") != "gaj.old" ||
		gaj.Batches != 3 || gaj.Rows != 30 || gaj.Bytes != 3000 || gaj.Applied != 1 || gaj.Consumers != 1 ||
		gaj.Decided != 1 || gaj.DecidedLate != 1 || gaj.FeedbackOverdue != 1 {
		t.Fatalf("provider line: %+v", gaj)
	}
	if mzj.Applications != 1 || mzj.GrantsNow != 1 || mzj.Batches != 0 {
		t.Fatalf("consumer line: %+v", mzj)
	}
	var out bytes.Buffer
	if err := reportDepartments(ctx, st, "csv", &out); err != nil || !strings.Contains(out.String(), "gaj,市公安局,2,2,gaj.old,3,30,3000,1,1,1,1,0,0,0,1,0,0") {
		t.Fatalf("csv: %v\n%s", err, out.String())
	}
}

// TestCalendarReload: a year's file added while the hub runs is used for
// the next deadline, without a restart.
func TestCalendarReload(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.HolidaysDir = dir
	cal, err := cfg.Calendar()
	if err != nil {
		t.Fatal(err)
	}
	h := &Hub{cfg: cfg, cal: cal, calAt: time.Now().Add(-time.Minute), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	newYear := time.Date(2026, 12, 31, 10, 0, 0, 0, calendar.CST) // Thursday
	if got := h.calendar().Deadline(newYear, 1); !got.Equal(time.Date(2027, 1, 2, 0, 0, 0, 0, calendar.CST)) {
		t.Fatalf("without 2027's file, Jan 1 is a working day: %s", got)
	}
	os.WriteFile(filepath.Join(dir, "2027.yaml"), []byte("year: 2027\nholidays:\n  - name: 元旦\n    off: [2027-01-01, 2027-01-03]\n"), 0o644)
	if got := h.calendar().Deadline(newYear, 1); !got.Equal(time.Date(2027, 1, 5, 0, 0, 0, 0, calendar.CST)) {
		t.Fatalf("with 2027's file, the deadline passes New Year: %s", got)
	}
}
