package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/pki"
)

// TestCertificateRenewal issues certificates that live one minute and keeps
// files flowing past the first certificates' end: each agent renews before
// expiry, no request fails on the way (no warning or error in any log, no
// handshake refused), and after a hub restart, which forces new handshakes
// once the first certificates are dead, the agents go on with the new ones.
func TestCertificateRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 90 s: the certificates must outlive their first minute")
	}
	src, dst := filepath.Join(t.TempDir(), "outbox"), filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	h := newHub(t, hubOpts{extra: "cert_validity: 1m\n"})
	h.start()
	prov := newNode(t, h, "prov-1", nodeOpts{resources: fileResource("prov.reports", src, "")})
	cons := newNode(t, h, "cons-1", nodeOpts{subs: fileSub("prov.reports", dst)})
	first := map[*node]time.Time{}
	for _, n := range []*node{prov, cons} {
		first[n] = certEnd(t, n)
		if d := time.Until(first[n]); d > 2*time.Minute {
			t.Fatalf("%s's certificate lives %v; cert_validity is 1m", n.id, d)
		}
	}
	prov.start()
	cons.start()
	h.grant("prov.reports", "cons-1")

	sums := map[string]string{}
	add := func(i int) {
		for k, v := range writeFiles(t, src, []fileSpec{{fmt.Sprintf("f%03d.bin", i), 64 << 10}}) {
			sums[k] = v
		}
	}
	end := first[prov]
	if first[cons].After(end) {
		end = first[cons]
	}
	for i := 0; time.Now().Before(end.Add(5 * time.Second)); i++ {
		add(i)
		time.Sleep(2 * time.Second)
	}
	waitArrived(t, dst, sums, time.Minute)

	levels := regexp.MustCompile(`"level":"(WARN|ERROR)"[^\n]*`)
	for _, n := range []*node{prov, cons} {
		if !logHas(n.logPath(), `"msg":"certificate renewed"`) {
			t.Errorf("%s never renewed its certificate", n.id)
		}
		if got := certEnd(t, n); !got.After(first[n]) {
			t.Errorf("%s's certificate on disk still ends at %v", n.id, got)
		}
		if m := levels.FindAll(mustRead(t, n.logPath()), 5); len(m) > 0 {
			t.Errorf("%s logged warnings or errors while renewing (a request failed):\n%s", n.id, bytesJoin(m))
		}
	}
	if logHas(h.p.log, "handshake refused") || logHas(h.p.log, "revoked or superseded") {
		t.Error("the hub refused a certificate during renewal; see its log")
	}

	// New handshakes now, with the first certificates long expired.
	h.p.kill()
	h.start()
	for i := 1000; i < 1003; i++ {
		add(i)
	}
	waitArrived(t, dst, sums, time.Minute)
	if logHas(h.p.log, "handshake refused") {
		t.Error("the hub refused a renewed certificate after its restart")
	}
	audit := h.central("audit", "list")
	if strings.Count(audit, "node.renew") < 2 {
		t.Errorf("the audit log holds %d node.renew records, want one per agent at least", strings.Count(audit, "node.renew"))
	}
}

// certEnd reads the end of the certificate an agent holds on disk.
func certEnd(t *testing.T, n *node) time.Time {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.state, "identity", "node.crt"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCertPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter
}

func bytesJoin(bs [][]byte) string {
	var s []string
	for _, b := range bs {
		s = append(s, string(b))
	}
	return strings.Join(s, "\n")
}
