package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/transport"
)

// TestReceiptsAndPurge: after a transfer the hub holds a verified receipt
// for every batch, refuses a receipt with one changed bit (and audits it),
// and deletes payloads once receipted and past retention.
func TestReceiptsAndPurge(t *testing.T) {
	h := newHub(t, hubOpts{retention: "1s"})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"a.txt", 3000}, {"b.bin", 9 << 20}})
	h.start()
	prov := newNode(t, h, "prov-r", nodeOpts{resources: fileResource("prov.r", src, "")})
	cons := newNode(t, h, "cons-r", nodeOpts{subs: fileSub("prov.r", dst)})
	prov.start()
	cons.start()
	h.grant("prov.r", "cons-r")
	waitArrived(t, dst, sums, time.Minute)

	g := strings.Fields(strings.Split(h.central("grant", "list"), "\n")[1])[0]
	if _, err := os.Stat(filepath.Join(h.payloadDir(), g)); err != nil {
		t.Fatalf("the hub's payload folder for %s is not where the test looks: %v", g, err)
	}
	waitFor(t, 30*time.Second, "payloads to be purged after their receipts", func() bool {
		n := 0
		filepath.WalkDir(h.payloadDir(), func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".qzb") {
				n++
			}
			return nil
		})
		return n == 0
	})
	var ls []agent.ReceiptLine
	if err := json.Unmarshal([]byte(mustRun(t, "qz-agent", "receipts", "--json", "--config", prov.cfg)), &ls); err != nil {
		t.Fatal(err)
	}
	if len(ls) == 0 {
		t.Fatal("provider sees no receipts")
	}
	for _, l := range ls {
		if !l.Verified {
			t.Errorf("provider could not verify the receipt of batch %d: %s", l.Seq, l.Problem)
		}
	}
	// A receipt changed at the hub fails the provider's own check, and the
	// command says so with its exit code.
	tamperHubDB(t, h, `UPDATE batches SET receipt = CAST(replace(CAST(receipt AS TEXT), '"applied":"2', '"applied":"1') AS BLOB) WHERE seq = 1`)
	if stdout, stderr, err := run("qz-agent", "receipts", "--config", prov.cfg); err == nil || !strings.Contains(stderr, "1 of ") || !strings.Contains(stdout, "signature") {
		t.Errorf("a receipt changed at the hub: err %v\n%s%s", err, stdout, stderr)
	}
	if list := h.central("batch", "list"); strings.Count(list, "purged") != len(ls) {
		t.Errorf("batch list does not show all %d batches purged:\n%s", len(ls), list)
	}
	audit := h.central("audit", "list")
	if got, want := strings.Count(audit, "batch.receipt"), strings.Count(audit, "batch.store"); got != want || got == 0 {
		t.Errorf("%d receipts for %d stored batches", got, want)
	}
	if !strings.Contains(audit, "batch.purge") {
		t.Error("no purge recorded in the audit log")
	}

	db, err := sql.Open("sqlite", filepath.Join(cons.state, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var raw []byte
	if err := db.QueryRow(`SELECT body FROM receipts ORDER BY seq LIMIT 1`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	id, err := agent.LoadIdentity(filepath.Join(cons.state, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	c := &transport.Client{Hub: h.addr, TLS: id.ClientTLS(h.addr), Mode: "auto"}
	defer c.Close()
	post := func(body []byte) int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.URL("/v1/receipts"), bytes.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(raw); code != http.StatusNoContent {
		t.Errorf("re-sending a valid receipt: %d, want 204", code)
	}
	// Flip one bit inside the applied timestamp: still valid JSON, wrong signature.
	i := bytes.Index(raw, []byte(`"applied":"`)) + len(`"applied":"`) + 3
	bad := bytes.Clone(raw)
	bad[i] ^= 0x01
	if code := post(bad); code != http.StatusUnprocessableEntity {
		t.Errorf("receipt with a changed bit: %d, want 422", code)
	}
	if !strings.Contains(h.central("audit", "list"), "receipt.reject") {
		t.Error("rejected receipt not audited")
	}
}
