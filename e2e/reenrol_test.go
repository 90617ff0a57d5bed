package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReEnrolment: a provider enrols again (new certificate, new seal
// key). A batch it sealed with the old key and the hub still holds is
// verified and applied by the consumer all the same, as is the next one
// sealed with the new key (accepted by the consumer, which pinned the old
// one, because an audited enrolment registered it, and shown as changed);
// the old certificate is refused.
func TestReEnrolment(t *testing.T) {
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	first := writeFiles(t, src, []fileSpec{{"before.txt", 2000}})
	h.start()
	prov := newNode(t, h, "prov-e", nodeOpts{resources: fileResource("prov.e", src, "")})
	cons := newNode(t, h, "cons-e", nodeOpts{subs: fileSub("prov.e", dst)})
	prov.start()
	h.grant("prov.e", "cons-e")
	waitFor(t, 30*time.Second, "the first batch at the hub", func() bool {
		return prov.status().Counters["upload_bytes_completed"] > 0
	})

	prov.p.stop()
	oldIdentity := filepath.Join(t.TempDir(), "identity")
	if err := os.Rename(filepath.Join(prov.state, "identity"), oldIdentity); err != nil {
		t.Fatal(err)
	}
	tok := h.central("node", "token", "prov-e")
	mustRun(t, "qz-agent", "enroll", "--config", prov.cfg, "--token", tok)
	prov.start()
	second := writeFiles(t, src, []fileSpec{{"after.txt", 3000}})

	cons.start()
	waitArrived(t, dst, first, time.Minute)
	waitArrived(t, dst, second, time.Minute)
	if rj := cons.status().Rejections; len(rj) != 0 {
		t.Errorf("consumer rejected batches across the re-enrolment: %+v", rj)
	}
	// The consumer pinned the first key; the new one, registered by an
	// audited enrolment, is accepted and shown as changed.
	if w := cons.status().KeyWarnings; len(w) != 1 || w[0].Node != "prov-e" || w[0].Status != "changed" || w[0].Enrolment == "" {
		t.Errorf("the consumer's key warnings: %+v", w)
	}
	// The superseded certificate no longer gets in.
	if code, err := hubGet(t, h, filepath.Dir(oldIdentity), "auto", "/v1/grants"); err == nil && code == 200 {
		t.Error("the certificate from before the re-enrolment still works")
	}
}
