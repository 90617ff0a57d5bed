package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/sqlitedb"
)

// sealFile records a spooled batch as seal does, with a file of size bytes.
func sealFile(t *testing.T, st *State, dir, grant string, seq uint64) spoolEntry {
	t.Helper()
	name := batchName(grant, seq)
	if err := os.WriteFile(filepath.Join(dir, name), []byte("batch"), 0o640); err != nil {
		t.Fatal(err)
	}
	e := spoolEntry{Grant: grant, Seq: seq, Resource: "r", File: name, Size: 5}
	if err := st.commitSealed(context.Background(), e, &connectors.Changes{}); err != nil {
		t.Fatal(err)
	}
	return e
}

func spooledSeqs(t *testing.T, st *State) []uint64 {
	t.Helper()
	es, err := st.spooled()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

// TestQuarantineKeepsLaterBatches: a batch set aside must not cost the
// batches sealed after it their upload, nor their files at the next start.
func TestQuarantineKeepsLaterBatches(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenState(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sealFile(t, st, dir, "g1", 1)
	es, _ := st.spooled()
	if err := st.setAside(es[0].ID); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "quarantine"), 0o750) // as rejected does
	os.Rename(filepath.Join(dir, es[0].File), filepath.Join(dir, "quarantine", es[0].File))
	sealFile(t, st, dir, "g1", 2)
	sealFile(t, st, dir, "g1", 3)
	if got := spooledSeqs(t, st); !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("waiting for upload after a quarantine: %v, want [2 3]", got)
	}
	if _, err := openSpool(dir, 1<<20, st); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{2, 3} {
		if _, err := os.Stat(filepath.Join(dir, batchName("g1", seq))); err != nil {
			t.Errorf("batch %d removed at start although the index lists it: %v", seq, err)
		}
	}
	if got := spooledSeqs(t, st); !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("waiting for upload after a restart: %v, want [2 3]", got)
	}
}

// TestSpoolMigration opens a state database of the earlier layout, where a
// quarantined batch had a negative id and a later batch got id 0 or below
// (never uploaded), and checks that every batch whose file is still there
// is uploaded again and no listed file is removed.
func TestSpoolMigration(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sqlitedb.Open(path, []string{`CREATE TABLE spool (id INTEGER PRIMARY KEY, grant_id TEXT NOT NULL, seq INTEGER NOT NULL, resource TEXT NOT NULL, file TEXT NOT NULL, size INTEGER NOT NULL, created TEXT NOT NULL, UNIQUE (grant_id, seq))`})
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "quarantine"), 0o750)
	for _, r := range []struct {
		id  int64
		seq uint64
		at  string // where its file is: "", "quarantine" or "gone"
	}{{-1, 1, "quarantine"}, {0, 2, ""}, {1, 3, ""}} {
		name := batchName("g1", r.seq)
		switch r.at {
		case "":
			os.WriteFile(filepath.Join(dir, name), []byte("batch"), 0o640)
		case "quarantine":
			os.WriteFile(filepath.Join(dir, "quarantine", name), []byte("batch"), 0o640)
		}
		if _, err := db.Exec(`INSERT INTO spool VALUES (?, 'g1', ?, 'r', ?, 5, '')`, r.id, r.seq, name); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	st, err := OpenState(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sp, err := openSpool(dir, 1<<20, st)
	if err != nil {
		t.Fatal(err)
	}
	if got := spooledSeqs(t, st); !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("waiting for upload after the migration: %v, want [2 3]", got)
	}
	if used, _ := sp.usage(); used != 10 {
		t.Errorf("spool counts %d bytes, want 10", used)
	}
	for _, p := range []string{batchName("g1", 2), batchName("g1", 3), filepath.Join("quarantine", batchName("g1", 1))} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	// New ids follow every old one: none is handed out twice.
	sealFile(t, st, dir, "g1", 4)
	var ids []int64
	rows, _ := st.db.Query(`SELECT id FROM spool ORDER BY seq`)
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	if len(ids) != 4 || !slices.IsSorted(ids) || ids[0] <= 0 {
		t.Errorf("ids by sequence: %v, want 4 rising positive ids", ids)
	}
}
