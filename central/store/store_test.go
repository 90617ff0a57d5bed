package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

func open(t *testing.T) *SQLite {
	t.Helper()
	s, err := OpenSQLite(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func sealKeyText(t *testing.T) (string, string) {
	t.Helper()
	k, err := seal.Generate()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.Public().MarshalText()
	return string(b), k.KeyID()
}

func TestTokenSingleUseAndExpiry(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	key1, id1 := sealKeyText(t)
	if err := s.AddNode(ctx, "n1", "一", "h1", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.AddNode(ctx, "n1", "again", "h9", time.Now().Add(time.Hour)); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate node: %v", err)
	}
	if id, err := s.Enroll(ctx, "h1", "ab", time.Now().Add(time.Hour), key1); err != nil || id != "n1" {
		t.Fatalf("first enrol: %q %v", id, err)
	}
	if _, err := s.Enroll(ctx, "h1", "cd", time.Now().Add(time.Hour), key1); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("second use of a token: %v", err)
	}
	if _, err := s.Enroll(ctx, "nope", "cd", time.Now().Add(time.Hour), key1); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("unknown token: %v", err)
	}
	if err := s.NewToken(ctx, "n1", "h2", time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enroll(ctx, "h2", "cd", time.Now().Add(time.Hour), key1); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("expired token: %v", err)
	}
	n, _ := s.Node(ctx, "n1")
	if n.Status != NodeActive || n.CertSerial != "ab" {
		t.Errorf("node after enrolment: %+v", n)
	}
	// Enrolling again with a new seal key keeps the old one verifiable.
	key2, id2 := sealKeyText(t)
	s.NewToken(ctx, "n1", "h3", time.Now().Add(time.Hour))
	if _, err := s.Enroll(ctx, "h3", "ef", time.Now().Add(time.Hour), key2); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{id1: key1, id2: key2} {
		if got, err := s.SealKey(ctx, "n1", id); err != nil || got != want {
			t.Errorf("seal key %s after re-enrolment: %q, %v", id, got, err)
		}
	}
	if _, err := s.SealKey(ctx, "n1", "0000"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown seal key: %v", err)
	}
	// Each key names the audited enrolment that registered it; a key put
	// in by hand names none.
	seq1, hash1, err1 := s.SealKeyEnrolment(ctx, "n1", id1)
	seq2, _, err2 := s.SealKeyEnrolment(ctx, "n1", id2)
	if err1 != nil || err2 != nil || seq1 <= 0 || seq2 <= seq1 || len(hash1) != 64 {
		t.Errorf("enrolments of the seal keys: %d %q %v, %d %v", seq1, hash1, err1, seq2, err2)
	}
	key3, id3 := sealKeyText(t)
	if _, err := s.db.ExecContext(ctx, `INSERT INTO seal_keys (node_id, key_id, pub, added) VALUES ('n1', ?, ?, '')`, id3, key3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.SealKeyEnrolment(ctx, "n1", id3); !errors.Is(err, ErrNotFound) {
		t.Errorf("a seal key without an enrolment: %v", err)
	}
	if n, _ := s.Node(ctx, "n1"); n.SealPub != key2 || n.CertSerial != "ef" {
		t.Errorf("current identity after re-enrolment: %+v", n)
	}
	// Renewal: from the current certificate, then from the previous one
	// (the answer to a renewal was lost), never from an older one.
	exp := time.Now().Add(2 * time.Hour)
	if err := s.Renew(ctx, "n1", "ef", "r1", exp); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Node(ctx, "n1"); n.CertSerial != "r1" || !n.Accepts("ef") || !n.Accepts("r1") || n.Accepts("ab") {
		t.Errorf("after a renewal: %+v", n)
	}
	if err := s.Renew(ctx, "n1", "ef", "r2", exp); err != nil {
		t.Errorf("renewal from the previous certificate (the last answer lost): %v", err)
	}
	if n, _ := s.Node(ctx, "n1"); n.CertSerial != "r2" || !n.Accepts("ef") || n.Accepts("r1") {
		t.Errorf("after a renewal from the previous certificate: %+v", n)
	}
	if err := s.Renew(ctx, "n1", "r1", "r3", exp); !errors.Is(err, ErrConflict) {
		t.Errorf("renewal from a superseded certificate: %v", err)
	}
	if err := s.Renew(ctx, "n1", "r2", "r4", exp); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Node(ctx, "n1"); !n.Accepts("r2") || n.Accepts("ef") {
		t.Errorf("after a second renewal: %+v", n)
	}
	if _, err := s.RevokeNode(ctx, "n1", false); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Node(ctx, "n1"); n.Status != NodeRevoked {
		t.Errorf("revoked node status %q", n.Status)
	}
}

func TestPendingStopsAtRevocation(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for _, id := range []string{"p", "c"} {
		s.AddNode(ctx, id, id, "t"+id, time.Now().Add(time.Hour))
	}
	s.RegisterResource(ctx, Resource{ID: "r", Provider: "p", Kind: "file"})
	if err := s.RegisterResource(ctx, Resource{ID: "r", Provider: "c", Kind: "file"}); !errors.Is(err, ErrConflict) {
		t.Errorf("resource taken by another node: %v", err)
	}
	s.AddGrant(ctx, Grant{ID: "g", Resource: "r", Provider: "p", Consumer: "c", Mode: "batch"})
	for seq := uint64(1); seq <= 3; seq++ {
		if err := s.PutBatch(ctx, Batch{Grant: "g", Sequence: seq, Resource: "r", Provider: "p", Consumer: "c", Size: 10, Digest: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutBatch(ctx, Batch{Grant: "g", Sequence: 2, Digest: "other"}); !errors.Is(err, ErrConflict) {
		t.Errorf("same sequence, other digest: %v", err)
	}
	s.PutReceipt(ctx, "g", 1, []byte("{}"), time.Now())
	bs, _ := s.Pending(ctx, "c", 10)
	if len(bs) != 2 || bs[0].Sequence != 2 || bs[1].Sequence != 3 {
		t.Fatalf("pending: %+v", bs)
	}
	// A grant with a long backlog does not hide another grant's batches.
	s.RegisterResource(ctx, Resource{ID: "r2", Provider: "p", Kind: "file"})
	if err := s.AddGrant(ctx, Grant{ID: "dup", Resource: "r", Provider: "p", Consumer: "c", Mode: "batch"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a second active grant of one resource to one consumer: %v", err)
	}
	s.AddGrant(ctx, Grant{ID: "h", Resource: "r2", Provider: "p", Consumer: "c", Mode: "batch"})
	for seq := uint64(4); seq <= 60; seq++ {
		s.PutBatch(ctx, Batch{Grant: "g", Sequence: seq, Resource: "r", Provider: "p", Consumer: "c", Size: 10, Digest: "d"})
	}
	s.PutBatch(ctx, Batch{Grant: "h", Sequence: 1, Resource: "r2", Provider: "p", Consumer: "c", Size: 10, Digest: "d"})
	bs, _ = s.Pending(ctx, "c", 20)
	if last := bs[len(bs)-1]; last.Grant != "h" {
		t.Errorf("grant h starved behind grant g's backlog: %d pending listed, last %s/%d", len(bs), last.Grant, last.Sequence)
	}
	s.RevokeGrant(ctx, "h", false)
	s.RevokeGrant(ctx, "g", false)
	if bs, _ := s.Pending(ctx, "c", 10); len(bs) != 0 {
		t.Errorf("revoked grant still delivers %d batches", len(bs))
	}
	if bs, _ := s.Purgeable(ctx, time.Now().Add(-time.Hour)); len(bs) != 0 {
		t.Errorf("%d batches purgeable before their retention", len(bs))
	}
	if bs, _ := s.Purgeable(ctx, time.Now().Add(time.Hour)); len(bs) != 61 {
		t.Errorf("%d batches purgeable after retention, want all 61 of the ended grants", len(bs))
	}
}

func TestAuditChain(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for i := range 5 {
		s.Audit(ctx, "operator", "test", "s", string(rune('a'+i)))
	}
	recs, err := s.AuditLog(ctx)
	if err != nil || len(recs) != 5 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	for i, r := range recs {
		if AuditHash(r) != r.Hash || (i > 0 && r.Prev != recs[i-1].Hash) {
			t.Fatalf("record %d does not chain", r.Seq)
		}
	}
	changed := recs[2]
	changed.Detail = "forged"
	if AuditHash(changed) == recs[2].Hash {
		t.Error("changing a record does not change its hash")
	}
}
