package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// twoNodes makes nodes p and c and p's resource r.
func twoNodes(t *testing.T) (*SQLite, context.Context) {
	t.Helper()
	ctx := context.Background()
	s := open(t)
	for _, id := range []string{"p", "c", "d"} {
		if err := s.AddNode(ctx, id, id, "t"+id, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RegisterResource(ctx, Resource{ID: "r", Provider: "p", Kind: "file"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterResource(ctx, Resource{ID: "rc", Provider: "c", Kind: "file"}); err != nil {
		t.Fatal(err)
	}
	return s, ctx
}

func TestPutBatchChecksGrant(t *testing.T) {
	s, ctx := twoNodes(t)
	b := func(g string, seq uint64) Batch {
		return Batch{Grant: g, Sequence: seq, Resource: "r", Provider: "p", Consumer: "c", Size: 10, Digest: "d"}
	}
	if err := s.AddGrant(ctx, Grant{ID: "g", Resource: "r", Provider: "p", Consumer: "c", Mode: api.ModeBatch}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBatch(ctx, b("g", 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeGrant(ctx, "g", false); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBatch(ctx, b("g", 2)); !errors.Is(err, ErrGrantEnded) {
		t.Errorf("batch stored after the grant's revocation: %v", err)
	}
	if _, err := s.Batch(ctx, "g", 2); !errors.Is(err, ErrNotFound) {
		t.Errorf("a record of the refused batch: %v", err)
	}
	// An expired grant is ended as much as a revoked one.
	s.AddGrant(ctx, Grant{ID: "e", Resource: "r", Provider: "p", Consumer: "d", Mode: api.ModeBatch, Expires: time.Now().Add(time.Second)})
	s.now = func() time.Time { return time.Now().Add(time.Hour) }
	if err := s.PutBatch(ctx, b("e", 1)); !errors.Is(err, ErrGrantEnded) {
		t.Errorf("batch stored under an expired grant: %v", err)
	}
	if err := s.PutBatch(ctx, b("nope", 1)); !errors.Is(err, ErrNotFound) {
		t.Errorf("batch of an unknown grant: %v", err)
	}
}

func TestRevokeNodeEndsItsGrants(t *testing.T) {
	s, ctx := twoNodes(t)
	for _, g := range []Grant{
		{ID: "p-to-c", Resource: "r", Provider: "p", Consumer: "c", Mode: api.ModeBatch},
		{ID: "p-to-d", Resource: "r", Provider: "p", Consumer: "d", Mode: api.ModeQuery},
		{ID: "c-to-d", Resource: "rc", Provider: "c", Consumer: "d", Mode: api.ModeBatch},
		{ID: "c-to-p", Resource: "rc", Provider: "c", Consumer: "p", Mode: api.ModeBatch},
	} {
		if err := s.AddGrant(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	s.PutBatch(ctx, Batch{Grant: "p-to-c", Sequence: 1, Resource: "r", Provider: "p", Consumer: "c", Size: 10, Digest: "d"})
	s.PutBatch(ctx, Batch{Grant: "c-to-d", Sequence: 1, Resource: "rc", Provider: "c", Consumer: "d", Size: 10, Digest: "d"})
	if m, _ := s.Summary(ctx); m.AwaitingDelivery != 2 || m.ActiveGrants != 4 {
		t.Fatalf("before: %+v", m)
	}
	ended, err := s.RevokeNode(ctx, "c", true)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"c-to-d", "c-to-p", "p-to-c"}; !slices.Equal(ended, want) {
		t.Errorf("grants ended: %v, want %v", ended, want)
	}
	for id, want := range map[string]string{"p-to-c": GrantRevoked, "c-to-d": GrantRevoked, "c-to-p": GrantRevoked, "p-to-d": GrantActive} {
		g, _ := s.Grant(ctx, id)
		if g.Status != want || (want == GrantRevoked) != g.Destroy {
			t.Errorf("grant %s after revoking node c: %s destroy=%t, want %s", id, g.Status, g.Destroy, want)
		}
	}
	if m, _ := s.Summary(ctx); m.AwaitingDelivery != 0 || m.AwaitingReceipt != 0 || m.ActiveGrants != 1 {
		t.Errorf("after revoking node c the hub shows %+v; want nothing awaiting and one active grant", m)
	}
	if bs, _ := s.Pending(ctx, "d", 10); len(bs) != 0 {
		t.Errorf("%d batches of the revoked node still pending for its consumer", len(bs))
	}
	if err := s.PutBatch(ctx, Batch{Grant: "c-to-d", Sequence: 2, Resource: "rc", Provider: "c", Consumer: "d", Size: 10, Digest: "d"}); !errors.Is(err, ErrGrantEnded) {
		t.Errorf("batch of the revoked provider stored: %v", err)
	}
	recs, _ := s.AuditLog(ctx)
	var revokes int
	for _, r := range recs {
		if r.Action == "grant.revoke" {
			revokes++
		}
	}
	if revokes != 3 {
		t.Errorf("%d grant.revoke records, want one per grant ended", revokes)
	}
}

func TestEnrollEndsOtherTokens(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	key, _ := sealKeyText(t)
	if err := s.AddNode(ctx, "n", "n", "first", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.NewToken(ctx, "n", "second", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enroll(ctx, "second", "s1", time.Now().Add(time.Hour), key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enroll(ctx, "first", "s2", time.Now().Add(time.Hour), key); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("an older token enrolled over the live node: %v", err)
	}
	if n, _ := s.Node(ctx, "n"); n.CertSerial != "s1" {
		t.Errorf("node's certificate %q, want the one of the enrolment", n.CertSerial)
	}
	// A token issued after the enrolment still works (a re-enrolment).
	s.NewToken(ctx, "n", "third", time.Now().Add(time.Hour))
	if _, err := s.Enroll(ctx, "third", "s3", time.Now().Add(time.Hour), key); err != nil {
		t.Errorf("a token issued after the enrolment: %v", err)
	}
}

func TestCopyBoundToGrant(t *testing.T) {
	s, ctx := twoNodes(t)
	s.AddGrant(ctx, Grant{ID: "g1", Resource: "r", Provider: "p", Consumer: "c", Mode: api.ModeBatch})
	s.AddGrant(ctx, Grant{ID: "g2", Resource: "rc", Provider: "c", Consumer: "d", Mode: api.ModeBatch})
	t0 := time.Now()
	if _, err := s.PutCopy(ctx, api.Copy{ID: "x", Grant: "g1", Resource: "r", Consumer: "c", State: api.CopyRunning, Updated: t0, Rows: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutCopy(ctx, api.Copy{ID: "x", Grant: "g2", Resource: "rc", Consumer: "d", State: api.CopyDone, Updated: t0.Add(time.Second)}); !errors.Is(err, ErrConflict) {
		t.Errorf("another grant's report overwrote copy x: %v", err)
	}
	cs, _ := s.Copies(ctx)
	if len(cs) != 1 || cs[0].Grant != "g1" || cs[0].Rows != 5 {
		t.Errorf("copies after the refused report: %+v", cs)
	}
	if _, err := s.PutCopy(ctx, api.Copy{ID: "x", Grant: "g1", Resource: "r", Consumer: "c", State: api.CopyDone, Updated: t0.Add(time.Second), Rows: 9}); err != nil {
		t.Errorf("the grant's own next report: %v", err)
	}
}

func TestGrantIDChecked(t *testing.T) {
	s, ctx := twoNodes(t)
	for _, id := range []string{"../payload", "a/b", "", ".hidden"} {
		if err := s.AddGrant(ctx, Grant{ID: id, Resource: "r", Provider: "p", Consumer: "c", Mode: api.ModeBatch}); !errors.Is(err, ErrInvalid) {
			t.Errorf("grant ID %q: %v", id, err)
		}
	}
}

func TestHeldBytes(t *testing.T) {
	s, ctx := twoNodes(t)
	s.AddGrant(ctx, Grant{ID: "g1", Resource: "r", Provider: "p", Consumer: "c", Mode: api.ModeBatch})
	s.AddGrant(ctx, Grant{ID: "g2", Resource: "r", Provider: "p", Consumer: "d", Mode: api.ModeBatch})
	for seq := uint64(1); seq <= 3; seq++ {
		s.PutBatch(ctx, Batch{Grant: "g1", Sequence: seq, Resource: "r", Provider: "p", Consumer: "c", Size: 100, Digest: "d"})
		s.PutBatch(ctx, Batch{Grant: "g2", Sequence: seq, Resource: "r", Provider: "p", Consumer: "d", Size: 10, Digest: "d"})
	}
	s.MarkDelivered(ctx, "g1", 2)
	s.PutReceipt(ctx, "g1", 1, []byte("{}"), time.Now())
	if held, _ := s.HeldBytes(ctx, "p"); held["p"] != 230 {
		t.Errorf("held %v, want p: 230 (one batch receipted; one delivered, not receipted, still held)", held)
	}
	s.RevokeGrant(ctx, "g2", false)
	if held, _ := s.HeldBytes(ctx, ""); held["p"] != 200 || len(held) != 1 {
		t.Errorf("held %v, want p: 200 (an ended grant's batches are not held against the quota)", held)
	}
	if n, _ := s.HighestSequence(ctx, "g1"); n != 3 {
		t.Errorf("highest sequence %d, want 3", n)
	}
	if n, _ := s.HighestSequence(ctx, "none"); n != 0 {
		t.Errorf("highest sequence of a grant with no batch %d", n)
	}
}
