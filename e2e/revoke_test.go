package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNodeRevokeEndsItsGrants: real hub and agents. With batches waiting
// for a consumer, 'qz-central node revoke --destroy' (through the running
// hub's admin socket) ends the consumer's grant in the same step: the hub
// shows none of its batches awaiting delivery, and the provider, which
// goes on producing, gets nothing more stored under it.
func TestNodeRevokeEndsItsGrants(t *testing.T) {
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"a.txt", 3000}})
	h.start()
	prov := newNode(t, h, "prov-r", nodeOpts{resources: fileResource("prov.r", src, "")})
	cons := newNode(t, h, "cons-r", nodeOpts{subs: fileSub("prov.r", dst)})
	prov.start()
	cons.start()
	g := h.grant("prov.r", "cons-r")
	waitArrived(t, dst, sums, time.Minute)

	type status struct {
		Batches          int `json:"batches"`
		AwaitingDelivery int `json:"awaiting_delivery"`
		ActiveGrants     int `json:"active_grants"`
	}
	hubStatus := func() status {
		var s status
		if err := json.Unmarshal([]byte(h.central("status", "--json")), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// The consumer goes away; what the provider sends now waits at the hub.
	cons.p.stop()
	writeFiles(t, src, []fileSpec{{"b.txt", 3000}})
	waitFor(t, 30*time.Second, "a batch awaiting delivery", func() bool { return hubStatus().AwaitingDelivery > 0 })

	out := h.central("node", "revoke", "cons-r", "--destroy")
	if !strings.Contains(out, g) {
		t.Errorf("node revoke does not name the grant it ended:\n%s", out)
	}
	before := hubStatus()
	if before.AwaitingDelivery != 0 || before.ActiveGrants != 0 {
		t.Errorf("after the node revoke the hub shows %+v, want nothing awaiting and no active grant", before)
	}
	if list := h.central("grant", "list"); !strings.Contains(list, "revoked") {
		t.Errorf("grant list after the node revoke:\n%s", list)
	}
	// The provider keeps producing; nothing more is stored for the grant.
	writeFiles(t, src, []fileSpec{{"c.txt", 3000}})
	time.Sleep(5 * time.Second) // rescan is 2 s: the provider has seen c.txt
	if after := hubStatus(); after.Batches != before.Batches {
		t.Errorf("%d batches stored after the node revoke (%d before)", after.Batches, before.Batches)
	}
	if audit := h.central("audit", "list"); !strings.Contains(audit, "node cons-r revoked") {
		t.Errorf("no grant.revoke record naming the node revoke in the audit log")
	}
}
