package central

import (
	"context"
	"path/filepath"
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
