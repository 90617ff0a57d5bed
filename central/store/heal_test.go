package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestDamagedBatchResent: rejections of one stored copy are audited at
// counts 1, 2, 4, 8 … only; a copy found damaged is dropped with one
// record, asked for again until a copy is stored, and counted afresh.
func TestDamagedBatchResent(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for _, id := range []string{"p", "c"} {
		s.AddNode(ctx, id, id, "t"+id, time.Now().Add(time.Hour))
	}
	s.RegisterResource(ctx, Resource{ID: "r", Provider: "p", Kind: "file"})
	s.AddGrant(ctx, Grant{ID: "g", Resource: "r", Provider: "p", Consumer: "c", Mode: "batch"})
	b := Batch{Grant: "g", Sequence: 1, Resource: "r", Provider: "p", Consumer: "c", Size: 10, Digest: "d"}
	if err := s.PutBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	count := func(action string) int {
		recs, err := s.AuditLog(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range recs {
			if r.Action == action && r.Subject == "g/1" {
				n++
			}
		}
		return n
	}
	for i := 1; i <= 100; i++ {
		if n, err := s.NoteRejection(ctx, "c", b, "seal check failed"); err != nil || n != i {
			t.Fatalf("rejection %d counted as %d: %v", i, n, err)
		}
	}
	if n := count("delivery.reject"); n != 7 { // 1 2 4 8 16 32 64
		t.Errorf("100 rejections wrote %d audit records, want 7", n)
	}
	if err := s.DropDamaged(ctx, b, "digest mismatch"); err != nil {
		t.Fatal(err)
	}
	if err := s.DropDamaged(ctx, b, "digest mismatch"); !errors.Is(err, ErrConflict) {
		t.Errorf("dropping a dropped batch: %v, want ErrConflict", err)
	}
	if _, err := s.Batch(ctx, "g", 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("dropped batch still stored: %v", err)
	}
	if seqs, err := s.Resends(ctx, "g"); err != nil || !slices.Equal(seqs, []uint64{1}) {
		t.Errorf("resends after the drop: %v %v, want [1]", seqs, err)
	}
	if err := s.PutBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	if seqs, err := s.Resends(ctx, "g"); err != nil || len(seqs) != 0 {
		t.Errorf("resends once stored again: %v %v, want none", seqs, err)
	}
	if n, err := s.NoteRejection(ctx, "c", b, "again"); err != nil || n != 1 {
		t.Errorf("first rejection of the re-sent copy counted as %d: %v", n, err)
	}
	if n := count("batch.damage"); n != 1 {
		t.Errorf("%d batch.damage records, want 1", n)
	}
	if _, err := s.LastReceipt(ctx, "g"); !errors.Is(err, ErrNotFound) {
		t.Errorf("last receipt before any: %v", err)
	}
	s.PutReceipt(ctx, "g", 1, []byte(`{}`), time.Now())
	if r, err := s.LastReceipt(ctx, "g"); err != nil || r.Sequence != 1 {
		t.Errorf("last receipt: %d %v", r.Sequence, err)
	}
}
