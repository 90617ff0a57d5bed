package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/transport"
)

// flipBit flips one bit in the middle of a file.
func flipBit(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func firstFile(t *testing.T, dir, suffix string) string {
	t.Helper()
	var found string
	waitFor(t, 30*time.Second, "a "+suffix+" file in "+dir, func() bool {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasSuffix(p, suffix) && found == "" {
				found = p
			}
			return nil
		})
		return found != ""
	})
	return found
}

// TestTamperedSpooledBatchRejectedByHub flips a bit in a batch waiting in
// the provider's spool; the hub refuses it and both sides record it.
func TestTamperedSpooledBatchRejectedByHub(t *testing.T) {
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	os.MkdirAll(src, 0o755)
	h.start()
	dst := filepath.Join(t.TempDir(), "inbox")
	prov := newNode(t, h, "prov-t", nodeOpts{resources: fileResource("prov.t", src, "")})
	cons := newNode(t, h, "cons-t", nodeOpts{subs: fileSub("prov.t", dst)})
	prov.start()
	cons.start()
	h.grant("prov.t", "cons-t")
	waitFor(t, 10*time.Second, "provider to learn the grant", func() bool { return logHas(prov.logPath(), "grants changed") })
	h.p.stop()
	sums := writeFiles(t, src, []fileSpec{{"a.txt", 10000}})
	batchFile := firstFile(t, filepath.Join(prov.state, "spool"), ".qzb")
	// The file is renamed into place before its index row commits: stop
	// the agent only once the batch is recorded, or it may remove the
	// file as unfinished.
	waitFor(t, 10*time.Second, "the batch to be recorded in the spool", func() bool { return prov.status().Spooled > 0 })
	prov.p.stop()
	out := mustRun(t, "qz-agent", "batch", "inspect", batchFile, "--config", prov.cfg)
	for _, want := range []string{"prov.t", "a.txt", "seal: OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("batch inspect output lacks %q:\n%s", want, out)
		}
	}
	flipBit(t, batchFile)
	out, _, err := run("qz-agent", "batch", "inspect", batchFile, "--config", prov.cfg)
	if err == nil || !strings.Contains(out, "FAILED") {
		t.Errorf("batch inspect of a damaged batch: err %v, output:\n%s", err, out)
	}
	h.start()
	prov.start()
	waitFor(t, 30*time.Second, "the provider to record the hub's rejection", func() bool {
		for _, r := range prov.status().Rejections {
			if r.Side == "hub" {
				return true
			}
		}
		return false
	})
	if !strings.Contains(h.central("audit", "list"), "batch.reject") {
		t.Error("hub audit log has no batch.reject record")
	}
	// The damaged batch never reached the consumer; the provider makes up
	// for it (TestHealSpoolDamaged) and what arrives is the original.
	waitArrived(t, dst, sums, time.Minute)
}

// TestTamperedDeliveryRejectedByConsumer flips a bit in a batch stored at
// the hub; the consumer refuses to apply it and both sides record it.
func TestTamperedDeliveryRejectedByConsumer(t *testing.T) {
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"a.txt", 10000}})
	h.start()
	prov := newNode(t, h, "prov-d", nodeOpts{resources: fileResource("prov.d", src, "")})
	cons := newNode(t, h, "cons-d", nodeOpts{subs: fileSub("prov.d", dst)})
	prov.start()
	h.grant("prov.d", "cons-d")
	stored := firstFile(t, h.payloadDir(), ".qzb")
	waitFor(t, 10*time.Second, "provider to finish uploading", func() bool { return prov.status().Spooled == 0 })
	flipBit(t, stored)
	cons.start()
	waitFor(t, 30*time.Second, "the consumer to record its rejection", func() bool {
		return len(cons.status().Rejections) > 0
	})
	waitFor(t, 10*time.Second, "hub audit of the rejection", func() bool {
		return strings.Contains(h.central("audit", "list"), "delivery.reject")
	})
	// The hub finds its copy damaged and the provider sends its kept copy
	// again (TestHealHubCopyDamaged): what arrives is the original.
	waitArrived(t, dst, sums, 30*time.Second)
}

// hubGet makes one request to the hub with a node's identity.
func hubGet(t *testing.T, h *hub, stateDir, mode, path string) (int, error) {
	t.Helper()
	id, err := agent.LoadIdentity(filepath.Join(stateDir, "identity"))
	if err != nil {
		t.Fatal(err)
	}
	c := &transport.Client{Hub: h.addr, TLS: id.ClientTLS(h.addr), Mode: mode}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL(path), nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestIdentity(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	n := newNode(t, h, "node-a", nodeOpts{})
	for _, mode := range []string{"quic", "tcp"} {
		if code, err := hubGet(t, h, n.state, mode, "/v1/grants"); err != nil || code != 200 {
			t.Fatalf("%s: enrolled node refused: %d %v", mode, code, err)
		}
	}

	t.Run("token works exactly once", func(t *testing.T) {
		tok := h.addNode("node-b")
		dir1, dir2 := t.TempDir(), t.TempDir()
		for i, d := range []string{dir1, dir2} {
			cfg := filepath.Join(d, "agent.yaml")
			os.WriteFile(cfg, []byte("hub: "+h.addr+"\nstate_dir: "+d+"/state\n"), 0o644)
			_, errOut, err := run("qz-agent", "enroll", "--config", cfg, "--token", tok)
			if i == 0 && err != nil {
				t.Fatalf("first use of the token failed: %v %s", err, errOut)
			}
			if i == 1 {
				if err == nil {
					t.Fatal("second use of the token succeeded")
				}
				if !strings.Contains(errOut, "already used") {
					t.Errorf("second use: unclear error %q", errOut)
				}
				if ents, _ := os.ReadDir(filepath.Join(d, "state", "identity")); len(ents) != 0 {
					t.Errorf("failed enrolment left files behind: %v", ents)
				}
			}
		}
	})

	t.Run("certificate from another CA refused", func(t *testing.T) {
		h2 := newHub(t, hubOpts{})
		h2.start()
		stranger := newNode(t, h2, "node-a", nodeOpts{}) // same node ID, other CA
		h2.p.stop()
		for _, mode := range []string{"quic", "tcp"} {
			if code, err := hubGet(t, h, stranger.state, mode, "/v1/grants"); err == nil {
				t.Errorf("%s: certificate from another CA accepted (%d)", mode, code)
			}
		}
	})

	t.Run("revoked node refused at handshake", func(t *testing.T) {
		// A connection opened before the revocation is cut off too.
		id, err := agent.LoadIdentity(filepath.Join(n.state, "identity"))
		if err != nil {
			t.Fatal(err)
		}
		live := &transport.Client{Hub: h.addr, TLS: id.ClientTLS(h.addr), Mode: "quic"}
		defer live.Close()
		get := func() int {
			req, _ := http.NewRequest(http.MethodGet, live.URL("/v1/grants"), nil)
			resp, err := live.Do(req)
			if err != nil {
				return 0
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if code := get(); code != http.StatusOK {
			t.Fatalf("before revocation: %d", code)
		}
		h.central("node", "revoke", "node-a")
		if code := get(); code == http.StatusOK {
			t.Error("an open connection kept working after its node was revoked")
		}
		for _, mode := range []string{"quic", "tcp"} {
			code, err := hubGet(t, h, n.state, mode, "/v1/ping")
			if err == nil {
				t.Errorf("%s: revoked node's handshake accepted (%d)", mode, code)
			}
		}
		if !logHas(h.p.log, "handshake refused") {
			t.Error("hub did not log the refused handshake")
		}
	})
}

// TestNoGrantNoData: a consumer without a grant receives nothing, even when
// it asks for a batch by name.
func TestNoGrantNoData(t *testing.T) {
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"secret.txt", 5000}})
	h.start()
	prov := newNode(t, h, "prov-n", nodeOpts{resources: fileResource("prov.n", src, "")})
	granted := newNode(t, h, "cons-yes", nodeOpts{subs: fileSub("prov.n", dst)})
	other := newNode(t, h, "cons-no", nodeOpts{})
	prov.start()
	granted.start()
	other.start()
	g := h.grant("prov.n", "cons-yes")
	waitArrived(t, dst, sums, time.Minute)
	time.Sleep(time.Second) // give the ungranted agent every chance to poll
	if n := other.counter(agent.CounterDownloadAttempted); n != 0 {
		t.Errorf("ungranted consumer downloaded %d bytes", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(other.state, "received")); len(ents) != 0 {
		t.Errorf("ungranted consumer has received data: %v", ents)
	}
	code, err := hubGet(t, h, other.state, "auto", "/v1/batches/"+g+"/1")
	if err != nil || code != http.StatusForbidden {
		t.Errorf("ungranted download by name: got %d %v, want 403", code, err)
	}
}
