package agent

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/anchor"
	"github.com/qianzhi/qianzhi/pkg/pki"
)

// TestKeepCheckpoints: the agent keeps the hub's checkpoints that verify
// under the CA it pinned, refuses (and counts) forged ones, and thins old
// ones to the newest of each hour plus the most recent.
func TestKeepCheckpoints(t *testing.T) {
	st, err := OpenState(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, _ := pki.NewCA("hub", time.Hour)
	other, _ := pki.NewCA("hub", time.Hour)
	head := strings.Repeat("ab", 32)
	sign := func(ca *pki.CA, seq int64, at time.Time) anchor.Checkpoint {
		c, err := anchor.Sign(ca, seq, head, at)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	good := sign(ca, 10, base)
	forged := sign(other, 11, base)
	forged.Hub = good.Hub
	n, err := st.keepCheckpoints(ca.Cert, []anchor.Checkpoint{good, forged})
	if n != 1 || !errors.Is(err, errCheckpointRefused) || !errors.Is(err, anchor.ErrForged) {
		t.Fatalf("kept %d, err %v; want the good one kept and the forged one refused", n, err)
	}
	if cs, _ := st.Counters(); cs[CounterCheckpointsRefused] != 1 {
		t.Fatalf("refusals counted: %v", cs)
	}
	if seq, _ := st.newestCheckpoint(); seq != 10 {
		t.Fatalf("newest kept %d, want 10", seq)
	}
	// A minute apart for 5 hours: 300 checkpoints, of which the newest of
	// each hour and the last keepRecentCheckpoints stay.
	var cps []anchor.Checkpoint
	for i := range 300 {
		cps = append(cps, sign(ca, int64(100+i), base.Add(time.Duration(i)*time.Minute)))
	}
	// The same again changes nothing; another head for a record held is
	// refused, and the first one stays.
	if n, err := st.keepCheckpoints(ca.Cert, []anchor.Checkpoint{good}); n != 0 || err != nil {
		t.Fatalf("the same checkpoint again: kept %d, %v", n, err)
	}
	other10, _ := anchor.Sign(ca, 10, strings.Repeat("cd", 32), base)
	if n, err := st.keepCheckpoints(ca.Cert, []anchor.Checkpoint{other10}); n != 0 || !errors.Is(err, errCheckpointConflict) {
		t.Fatalf("another head for record 10: kept %d, %v", n, err)
	}
	if kept, _ := st.checkpoints(); len(kept) != 1 || kept[0].Head != head {
		t.Fatalf("held after the conflict: %+v", kept)
	}
	if _, err := st.keepCheckpoints(ca.Cert, cps); err != nil {
		t.Fatal(err)
	}
	kept, err := st.checkpoints()
	if err != nil {
		t.Fatal(err)
	}
	// Hours 0–3 keep their newest (minute 59); hour 4 is within the last
	// 24 kept whole; seq 10 (hour 0 as well) gave way to minute 59.
	if want := 4 + keepRecentCheckpoints; len(kept) != want {
		t.Fatalf("kept %d checkpoints, want %d", len(kept), want)
	}
	if kept[0].Seq != 100+59 || kept[len(kept)-1].Seq != 399 {
		t.Fatalf("kept from %d to %d", kept[0].Seq, kept[len(kept)-1].Seq)
	}
	for _, c := range kept {
		if err := c.Verify(ca.Cert); err != nil {
			t.Fatalf("kept checkpoint %d does not verify after the round trip: %v", c.Seq, err)
		}
	}
}
