package central

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/anchor"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/pki"
)

// TestVerifyAgainst: checkpoints held by an agent show records cut from the
// end (the last 1, 5, 20, or all) and a log rewritten and re-hashed, which
// the chain alone passes; a forged checkpoint is reported, not believed.
func TestVerifyAgainst(t *testing.T) {
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	ca, err := pki.NewCA("hub", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var held []anchor.Checkpoint
	for i := 1; i <= 60; i++ {
		st.Audit(ctx, "operator", "node.add", fmt.Sprint("n", i), "")
		if i%20 == 0 {
			seq, hash, _ := st.AuditHead(ctx)
			c, err := anchor.Sign(ca, seq, hash, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
	}
	recs, _ := st.AuditLog(ctx)
	gaj := []anchor.File{{Holder: "gaj", Checkpoints: held}}
	if rep := verifyAgainst(recs, gaj, ca.Cert); len(rep.Problems) > 0 || rep.Checked != 3 || rep.Newest.Seq != 60 {
		t.Fatalf("intact log: %+v", rep)
	}
	rehash := func(log []store.AuditRecord, from int) []store.AuditRecord {
		out := append([]store.AuditRecord(nil), log...)
		out[from-1].Detail = "resource=other"
		for i := from - 1; i < len(out); i++ {
			if i > 0 {
				out[i].Prev = out[i-1].Hash
			}
			out[i].Hash = store.AuditHash(out[i])
		}
		return out
	}
	other, _ := pki.NewCA("hub", time.Hour)
	forged, _ := anchor.Sign(other, 90, strings.Repeat("ab", 32), time.Now())
	forged.Hub = held[0].Hub
	for _, c := range []struct {
		name string
		log  []store.AuditRecord
		held []anchor.Checkpoint
		want string
	}{
		{"last record cut", recs[:59], held, "record 60 is missing: checkpoint "},
		{"last 5 cut", recs[:55], held, "records 56–60 are missing: checkpoint "},
		{"last 20 cut", recs[:40], held, "records 41–60 are missing"},
		{"all cut", nil, held, "records 1–60 are missing"},
		{"rewritten", rehash(recs, 30), held, "record 40 is not the one the hub signed (checkpoint "},
		{"forged", recs, append(held, forged), "from agent gaj signed head 90 is not believed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := VerifyAudit(c.log); err != nil {
				t.Fatalf("the chain alone should pass this: %v", err)
			}
			rep := verifyAgainst(c.log, []anchor.File{{Holder: "gaj", Checkpoints: c.held}}, ca.Cert)
			err := joinProblems(rep.Problems)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if c.name == "forged" && strings.Contains(err.Error(), "missing") {
				t.Fatalf("a forged checkpoint was believed: %v", err)
			}
		})
	}
	// The message names the holder and the range, for the operator.
	err = joinProblems(verifyAgainst(recs[:40], gaj, ca.Cert).Problems)
	if !strings.Contains(err.Error(), "from agent gaj signed head 60") {
		t.Fatalf("holder not named: %v", err)
	}
	rewritten := joinProblems(verifyAgainst(rehash(recs, 30), gaj, ca.Cert).Problems)
	if !strings.Contains(rewritten.Error(), "one of records 21–40 was changed") {
		t.Fatalf("rewritten range not bounded by the checkpoint that still matches: %v", rewritten)
	}
}

// TestHubRefusesCutLog: a hub whose log is shorter than its own newest
// checkpoint does not start (and so never chains new records onto the
// cut); the error names the records and the fix. The checkpoint it
// signed serves agents over GET /v1/audit/checkpoints.
func TestHubRefusesCutLog(t *testing.T) {
	c := newCallHub(t)
	ctx := context.Background()
	for i := range 10 {
		c.h.Store().Audit(ctx, "operator", "node.add", fmt.Sprint("n", i), "")
	}
	if err := c.h.checkAnchor(ctx); err != nil {
		t.Fatalf("no checkpoint yet: %v", err)
	}
	if err := c.h.signCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	head, hash, _ := c.h.Store().AuditHead(ctx)
	w := c.do("gaj", http.MethodGet, "/v1/audit/checkpoints?after=0", nil)
	var got api.AuditCheckpoints
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != http.StatusOK {
		t.Fatalf("GET checkpoints: %d %s", w.Code, w.Body)
	}
	if len(got.Checkpoints) != 1 || got.Checkpoints[0].Seq != head || got.Checkpoints[0].Head != hash || got.Checkpoints[0].Verify(c.h.ca.Cert) != nil {
		t.Fatalf("checkpoints served: %+v (head %d)", got, head)
	}
	if w := c.do("gaj", http.MethodGet, fmt.Sprintf("/v1/audit/checkpoints?after=%d", head), nil); !strings.Contains(w.Body.String(), `"checkpoints":null`) {
		t.Fatalf("nothing newer: %s", w.Body)
	}
	if w := c.do("gaj", http.MethodGet, "/v1/audit/checkpoints?after=x", nil); w.Code != http.StatusBadRequest {
		t.Fatalf("bad after: %d", w.Code)
	}
	cfg := c.h.cfg
	c.h.Close()
	db, err := sql.Open("sqlite", "file:"+cfg.dbPath()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DELETE FROM audit WHERE seq > ?`, head-5); err != nil {
		t.Fatal(err)
	}
	db.Close()
	cfg.Listen = "127.0.0.1:0"
	h, err := Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = h.Serve(sctx, func(string, string) { t.Error("the hub listened on a cut log") })
	want := fmt.Sprintf("records %d–%d were removed; restore the hub's state from a backup", head-4, head)
	if !errors.Is(err, ErrAuditCut) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "audit accept-cut --reason") {
		t.Fatalf("start on a cut log: %v, want %q and the way on without a backup", err, want)
	}
	h.Close()

	// Without a backup, the operator accepts the loss, with a reason; the
	// hub starts again and the log says what was lost.
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Run(ctx, append(args, "--config", c.cfg), &out, &out)
		return out.String(), err
	}
	if _, err := run("audit", "accept-cut"); err == nil || !strings.Contains(err.Error(), "needs --reason") {
		t.Fatalf("accept-cut without a reason: %v", err)
	}
	if out, err := run("audit", "accept-cut", "--reason", "disk failure, no backup since"); err != nil || !strings.Contains(out, fmt.Sprintf("records %d–%d no longer as the hub signed them; 1 checkpoints dropped", head-4, head)) {
		t.Fatalf("accept-cut: %v %s", err, out)
	}
	if out, err := run("audit", "accept-cut", "--reason", "again"); err != nil || !strings.Contains(out, "nothing to accept") {
		t.Fatalf("accept-cut again: %v %s", err, out)
	}
	h, err = Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	sctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	started := false
	if err := h.Serve(sctx, func(string, string) { started = true; cancel() }); err != nil || !started {
		t.Fatalf("start after accept-cut: %v (listened: %t)", err, started)
	}
	recs, _ := h.Store().AuditLog(ctx)
	if r := recs[len(recs)-1]; r.Action != "audit.cut" || !strings.Contains(r.Detail, "reason=disk failure, no backup since") {
		t.Fatalf("last record %+v, want the audit.cut", r)
	}
	if cps, _ := h.Store().Checkpoints(ctx, 0, 1); len(cps) != 1 || cps[0].Seq != recs[len(recs)-1].Seq {
		t.Fatalf("the restarted hub signed %+v, want its new head", cps)
	}
}

// TestAuditVerifyAgainstCommand runs qz-central audit verify --against and
// audit checkpoints --export on a hub's database, as an operator would.
func TestAuditVerifyAgainstCommand(t *testing.T) {
	c := newCallHub(t)
	ctx := context.Background()
	if err := c.h.signCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	head, _, _ := c.h.Store().AuditHead(ctx)
	dir := filepath.Join(t.TempDir(), "anchors")
	// A remote operator's request naming a folder is refused by the hub
	// too: it would write there as the hub's user.
	if r := c.h.adminExec(ctx, "operator:wang", "operator", []string{"audit", "checkpoints", "--export", dir}); !strings.Contains(r.Error, "run it on the hub host") {
		t.Fatalf("remote export through the hub: %+v", r)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("the hub wrote the folder for a remote operator")
	}
	c.h.Close()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Run(ctx, append(args, "--config", c.cfg), &out, &out)
		return out.String(), err
	}
	if out, err := run("audit", "checkpoints", "--export", dir); err != nil || !strings.Contains(out, "1 checkpoints written") {
		t.Fatalf("export: %v %s", err, out)
	}
	// As if an agent had kept them: the same checkpoints, held by gaj.
	fs, err := anchor.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "audit-checkpoints-hub.json"))
	if _, err := anchor.Write(dir, anchor.File{Holder: "gaj", Checkpoints: fs[0].Checkpoints}); err != nil {
		t.Fatal(err)
	}
	if out, err := run("audit", "verify", "--against", dir); err != nil || !strings.Contains(out, "held by hub, gaj") {
		t.Fatalf("intact: %v %s", err, out)
	}
	// From elsewhere, the folder would be the hub host's: refused before
	// anything is dialled.
	if _, err := run("audit", "checkpoints", "--export", dir, "--remote", "127.0.0.1:1", "--operator", t.TempDir()); err == nil || !strings.Contains(err.Error(), "run it there") {
		t.Fatalf("remote export: %v", err)
	}
	if _, err := run("audit", "verify", "--against", t.TempDir()); err == nil || !strings.Contains(err.Error(), "no audit-checkpoints-*.json files") {
		t.Fatalf("empty folder: %v", err)
	}
	cfg, _ := LoadConfig(c.cfg)
	db, _ := sql.Open("sqlite", "file:"+cfg.dbPath()+"?_pragma=busy_timeout(10000)")
	// The intruder cuts the last two records and the hub's own checkpoints.
	db.Exec(`DELETE FROM audit WHERE seq > ?`, head-2)
	db.Exec(`DELETE FROM audit_checkpoints`)
	db.Close()
	if out, err := run("audit", "verify"); err != nil {
		t.Fatalf("the chain alone passes the cut: %v %s", err, out)
	}
	want := fmt.Sprintf("records %d–%d are missing: checkpoint ", head-1, head)
	if _, err := run("audit", "verify", "--against", dir); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "from agent gaj") {
		t.Fatalf("against the agent's copy: %v, want %q", err, want)
	}
}
