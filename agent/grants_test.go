package agent

import (
	"log/slog"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// TestWellFormedGrants: grant and resource IDs from the hub name files in
// the spool and the inbox, so a malformed one never gets that far.
func TestWellFormedGrants(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	in := []api.GrantInfo{
		{ID: "g-1", Resource: "gaj.files"},
		{ID: "../../identity/node", Resource: "gaj.files"},
		{ID: "g-2", Resource: "../x"},
		{ID: "", Resource: "gaj.files"},
		{ID: ".hidden", Resource: "gaj.files"},
		{ID: "g/3", Resource: "gaj.files"},
		{ID: "g-4", Resource: "gaj.people"},
	}
	got := a.wellFormed(in)
	if len(got) != 2 || got[0].ID != "g-1" || got[1].ID != "g-4" {
		t.Fatalf("kept %+v, want only g-1 and g-4", got)
	}
}
