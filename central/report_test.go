package central

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
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
