package central

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/central/store"
)

// TestVerifyAudit: a changed, removed or reordered record breaks the chain.
func TestVerifyAudit(t *testing.T) {
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for _, a := range []string{"node.add", "node.enroll", "grant.add", "batch.store", "batch.receipt"} {
		st.Audit(ctx, "operator", a, "s", "d")
	}
	recs, err := st.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyAudit(recs); err != nil {
		t.Fatalf("intact log rejected: %v", err)
	}
	clone := func() []store.AuditRecord { return append([]store.AuditRecord(nil), recs...) }
	changed := clone()
	changed[2].Detail = "resource=other"
	removed := append(clone()[:1], recs[2:]...)
	reordered := clone()
	reordered[1], reordered[2] = reordered[2], reordered[1]
	truncatedHead := clone()[1:]
	rehashed := clone() // a forger recomputes the changed record's own hash
	rehashed[2].Actor = "someone"
	rehashed[2].Hash = store.AuditHash(rehashed[2])
	for name, log := range map[string][]store.AuditRecord{
		"changed": changed, "removed": removed, "reordered": reordered, "head removed": truncatedHead, "rehashed": rehashed,
	} {
		if err := VerifyAudit(log); err == nil {
			t.Errorf("%s record not detected", name)
		}
	}
}

// TestAuditVerifyOnDisk edits the hub's database directly, as someone with
// access to the file might, and runs qz-central audit verify: it passes on
// the untouched log and fails, naming the record, after each edit.
func TestAuditVerifyOnDisk(t *testing.T) {
	for _, c := range []struct {
		name, sql, want string
	}{
		{"edited", `UPDATE audit SET detail = 'resource=其他' WHERE seq = 3`, "audit record 3 was changed"},
		{"deleted", `DELETE FROM audit WHERE seq = 2`, "audit record 2 is missing"},
		{"swapped", `UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -2`, "audit record 2"},
		{"re-hashed after an edit", `UPDATE audit SET actor = 'someone' WHERE seq = 4`, "record 4 (or one before it) was changed and re-hashed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfgPath := filepath.Join(dir, "central.yaml")
			os.WriteFile(cfgPath, []byte("state_dir: "+dir+"\n"), 0o644)
			ctx := context.Background()
			var init bytes.Buffer
			if err := Run(ctx, []string{"init", "--config", cfgPath}, &init, &init); err != nil {
				t.Fatal(err)
			}
			st, err := store.OpenSQLite(filepath.Join(dir, "central.db"))
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range []string{"node.add", "node.enroll", "grant.add", "batch.store", "batch.receipt"} {
				st.Audit(ctx, "operator", a, "s", "d")
			}
			st.Close()
			verify := func() error {
				var out bytes.Buffer
				return Run(ctx, []string{"audit", "verify", "--config", cfgPath}, &out, &out)
			}
			if err := verify(); err != nil {
				t.Fatalf("untouched log: %v", err)
			}
			db, err := sql.Open("sqlite", filepath.Join(dir, "central.db"))
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range strings.Split(c.sql, "; ") {
				if _, err := db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			if c.name == "re-hashed after an edit" {
				// A forger recomputes the edited record's own hash too.
				recs, _ := store.OpenSQLite(filepath.Join(dir, "central.db"))
				log, _ := recs.AuditLog(ctx)
				recs.Close()
				db.Exec(`UPDATE audit SET hash = ? WHERE seq = 4`, store.AuditHash(log[3]))
			}
			db.Close()
			if err := verify(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("after the %s record: %v, want %q", c.name, err, c.want)
			}
		})
	}
}
