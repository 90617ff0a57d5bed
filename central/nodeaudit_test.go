package central

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// TestNodeAuditBounded: what a node sends in a loop that cannot succeed
// writes at most about auditBurst records one by one, the rest summed up
// in one record per action, each record's text clipped.
func TestNodeAuditBounded(t *testing.T) {
	c := newCallHub(t, "mzj", "sbj", "rsj")
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	long := strings.Repeat("校验失败", 2500) // 30 KB of three-byte characters
	const n = auditBurst + 50
	// delivery.reject is bounded by the rejection handler itself (records
	// at the 1st, 2nd, 4th … rejection of one stored copy, none for a batch
	// not stored): TestHealHubCopyDamaged and TestRejectionClipped.
	for _, tc := range []struct {
		node, action string
		send         func() int
		want         int
	}{
		{"sbj", "receipt.reject", func() int {
			return c.do("sbj", http.MethodPost, "/v1/receipts", []byte(`{"grant": 1`+long)).Code
		}, http.StatusBadRequest},
		{"rsj", "access.refuse", func() int {
			return c.do("rsj", http.MethodGet, "/v1/batches/"+g+"/1", nil).Code
		}, http.StatusForbidden},
	} {
		t.Run(tc.action, func(t *testing.T) {
			for range n {
				if code := tc.send(); code != tc.want {
					t.Fatalf("answer %d, want %d", code, tc.want)
				}
			}
			ctx := context.Background()
			count := func() (one, summaries int, detail string) {
				log, err := c.h.Store().AuditLog(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range log {
					if r.Actor != tc.node || r.Action != tc.action {
						continue
					}
					if len(r.Detail) > maxAuditDetail+len("…") || !utf8.ValidString(r.Detail) {
						t.Fatalf("a record of %d bytes (valid UTF-8: %t)", len(r.Detail), utf8.ValidString(r.Detail))
					}
					if r.Subject == "summary" {
						summaries++
						detail = r.Detail
					} else {
						one++
					}
				}
				return one, summaries, detail
			}
			one, _, _ := count()
			if one >= n || one < auditBurst {
				t.Errorf("%d of %d records written one by one, want about %d", one, n, auditBurst)
			}
			c.h.flushNodeAudits(ctx)
			_, summaries, detail := count()
			if want := fmt.Sprintf("%d more ", n-one); summaries != 1 || !strings.HasPrefix(detail, want) {
				t.Errorf("%d summaries, the last %q; want one starting %q", summaries, detail, want)
			}
		})
	}
}

// TestRejectionClipped: a consumer's long rejection reason is cut on a
// character boundary, so the audit record stays valid UTF-8.
func TestRejectionClipped(t *testing.T) {
	long := strings.Repeat("校验失败", 300)
	got := clipText(long, maxRejectReason)
	if len(got) > maxRejectReason+len("…") || !utf8.ValidString(got) {
		t.Fatalf("clipped to %d bytes, valid UTF-8 %t", len(got), utf8.ValidString(got))
	}
}
