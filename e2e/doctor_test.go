package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/internal/mariadbtest"
)

// doctorResult is one run of qz-agent doctor --json.
type doctorResult struct {
	findings []agent.Finding
	byCheck  map[string]agent.Finding
	err      error // the exit status
	stderr   string
}

// runDoctor runs qz-agent doctor --json with cfg and decodes its findings.
func runDoctor(t *testing.T, cfg string) doctorResult {
	t.Helper()
	start := time.Now()
	out, errOut, err := run("qz-agent", "doctor", "--json", "--config", cfg)
	r := doctorResult{err: err, stderr: errOut, byCheck: map[string]agent.Finding{}}
	if jerr := json.Unmarshal([]byte(out), &r.findings); jerr != nil {
		t.Fatalf("doctor --json: %v (exit: %v)\nstdout:\n%s\nstderr:\n%s", jerr, err, out, errOut)
	}
	var b strings.Builder
	for _, f := range r.findings {
		r.byCheck[f.Check] = f
		fmt.Fprintf(&b, "\n%s %s: %s", f.Verdict, f.Check, f.Detail)
		if f.Fix != "" {
			fmt.Fprintf(&b, "\n  fix: %s", f.Fix)
		}
	}
	t.Logf("doctor took %s, exit %v:%s", time.Since(start).Round(time.Millisecond), err, b.String())
	return r
}

// want fails the test unless check has the verdict and its detail (or, with
// fix set, its fix) holds every phrase.
func (r doctorResult) want(t *testing.T, check, verdict string, phrases ...string) agent.Finding {
	t.Helper()
	f, ok := r.byCheck[check]
	if !ok {
		t.Fatalf("no %q check in %+v", check, r.findings)
	}
	if f.Verdict != verdict {
		t.Errorf("%s: verdict %q, want %q: %s (fix: %s)", check, f.Verdict, verdict, f.Detail, f.Fix)
	}
	for _, p := range phrases {
		if !strings.Contains(f.Detail, p) && !strings.Contains(f.Fix, p) {
			t.Errorf("%s: %q is neither in the detail %q nor in the fix %q", check, p, f.Detail, f.Fix)
		}
	}
	if verdict != agent.VerdictOK && f.Fix == "" {
		t.Errorf("%s is %s but says nothing about how to fix it", check, verdict)
	}
	return f
}

// wantExit fails the test unless doctor exited non-zero exactly when fail.
func (r doctorResult) wantExit(t *testing.T, fail bool) {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case fail && r.err == nil:
		t.Errorf("doctor exited 0 with a failing check: %+v", r.findings)
	case fail && !strings.Contains(r.stderr, "checks failed"):
		t.Errorf("doctor's error does not say checks failed: %q", r.stderr)
	case !fail && r.err != nil:
		t.Errorf("doctor failed (%v) without a failing check: %s %+v", r.err, r.stderr, r.findings)
	case r.err != nil && !(errors.As(r.err, &ee) && ee.ExitCode() == 1):
		t.Errorf("doctor did not exit with status 1: %v", r.err)
	}
}

// writeAgentConfig writes a config for an enrolled node's state with other
// resources, subscriptions or settings.
func writeAgentConfig(t *testing.T, hubAddr, state, yaml string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	base := fmt.Sprintf("hub: %s\ntransport: auto\nstate_dir: %s\n", hubAddr, state)
	if err := os.WriteFile(cfg, []byte(base+yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestDoctor shows each problem qz-agent doctor is for, each with its
// verdict, against real hubs, a real MariaDB and a real full disk.
func TestDoctor(t *testing.T) {
	srv := mariadbtest.Get(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	if _, err := srv.Open(t, a).Exec(peopleDDL); err != nil {
		t.Fatal(err)
	}
	folder := t.TempDir()

	h := newHub(t, hubOpts{})
	h.start()
	n := newNode(t, h, "doc-a", nodeOpts{})
	healthy := writeAgentConfig(t, h.addr, n.state,
		"resources:\n"+mysqlResource("doc-a.people", srv.DSN(a), "")+fileResource("doc-a.files", folder, "")+
			"subscriptions:\n"+mysqlSub("doc-b.people", srv.DSN(b)))

	t.Run("healthy", func(t *testing.T) {
		r := runDoctor(t, healthy)
		r.wantExit(t, false)
		for _, f := range r.findings {
			if f.Verdict != agent.VerdictOK {
				t.Errorf("%s: %s %s (fix: %s)", f.Check, f.Verdict, f.Detail, f.Fix)
			}
		}
		for _, c := range []string{"hub quic", "hub tcp", "certificate", "clock", "resource doc-a.people", "resource doc-a.files", "subscription doc-b.people", "disk"} {
			r.want(t, c, agent.VerdictOK)
		}
		r.want(t, "certificate", agent.VerdictOK, "node doc-a", "days left")
		out := mustRun(t, "qz-agent", "doctor", "--config", healthy)
		t.Logf("qz-agent doctor, healthy:\n%s", out)
		if !strings.Contains(out, "ok    hub quic") || strings.Contains(out, "fix:") {
			t.Errorf("unexpected text output:\n%s", out)
		}
	})

	t.Run("wrong database password", func(t *testing.T) {
		c := srv.Config(a)
		c.Passwd = "not-the-password"
		cfg := writeAgentConfig(t, h.addr, n.state, "resources:\n"+mysqlResource("doc-a.people", c.FormatDSN(), ""))
		r := runDoctor(t, cfg)
		r.wantExit(t, true)
		r.want(t, "resource doc-a.people", agent.VerdictFail, "Access denied", "check the user and password", cfg)
		r.want(t, "hub tcp", agent.VerdictOK)
		if strings.Contains(fmt.Sprint(r.findings), "not-the-password") {
			t.Error("doctor printed the password")
		}
	})

	t.Run("disk nearly full", func(t *testing.T) {
		dir := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", dir).CombinedOutput(); err != nil {
			t.Skipf("cannot mount a small tmpfs to fill (needs root): %v %s", err, out)
		}
		t.Cleanup(func() {
			if err := syscall.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		state := filepath.Join(dir, "state")
		cfg := writeAgentConfig(t, h.addr, state, "spool:\n  quota: 16MiB\n")
		mustRun(t, "qz-agent", "enroll", "--config", cfg, "--token", h.addNode("doc-disk"))
		r := runDoctor(t, cfg)
		r.wantExit(t, false)
		r.want(t, "disk", agent.VerdictOK, dir)

		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		total, avail := int64(st.Blocks)*st.Bsize, int64(st.Bavail)*st.Bsize
		fill := avail - total*3/100 // 97% used
		if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, fill), 0o644); err != nil {
			t.Fatal(err)
		}
		r = runDoctor(t, cfg)
		r.wantExit(t, true)
		r.want(t, "disk", agent.VerdictFail, "nearly full", "free space on the filesystem of "+dir)
	})

	t.Run("node revoked", func(t *testing.T) {
		m := newNode(t, h, "doc-revoked", nodeOpts{})
		h.central("node", "revoke", "doc-revoked")
		cfg := writeAgentConfig(t, h.addr, m.state, "")
		r := runDoctor(t, cfg)
		r.wantExit(t, true)
		r.want(t, "hub tcp", agent.VerdictFail, "refused this node's certificate", "qz-central node token doc-revoked")
		r.want(t, "hub quic", agent.VerdictFail, "refused this node's certificate")
	})

	t.Run("hub down", func(t *testing.T) {
		h.p.kill()
		r := runDoctor(t, healthy)
		r.wantExit(t, true)
		r.want(t, "hub tcp", agent.VerdictFail, "hub unreachable at "+h.addr, "connection refused", "qz-central runs")
		r.want(t, "hub quic", agent.VerdictFail, "hub unreachable at "+h.addr)
		r.want(t, "clock", agent.VerdictWarn, "not checked")
		r.want(t, "resource doc-a.people", agent.VerdictOK)
	})

	t.Run("UDP blocked", func(t *testing.T) {
		h := newHub(t, hubOpts{noQUIC: true}) // the hub serves TLS/TCP only: QUIC gets no answer
		h.start()
		n := newNode(t, h, "doc-udp", nodeOpts{transport: "tcp"}) // enrols without waiting for QUIC
		cfg := writeAgentConfig(t, h.addr, n.state, "")           // transport: auto
		r := runDoctor(t, cfg)
		r.wantExit(t, false)
		r.want(t, "hub quic", agent.VerdictWarn, "UDP seems blocked", "falls back to TLS/TCP", "open UDP port", "transport: tcp")
		r.want(t, "hub tcp", agent.VerdictOK)
		r.want(t, "clock", agent.VerdictOK)
		out, errOut, err := run("qz-agent", "doctor", "--config", cfg)
		t.Logf("qz-agent doctor, UDP blocked:\n%s%s", out, errOut)
		if err != nil || !strings.Contains(out, "warn  hub quic") || !strings.Contains(out, "  fix: open UDP port") {
			t.Errorf("unexpected text output (%v):\n%s", err, out)
		}
	})

	t.Run("clock skewed", func(t *testing.T) {
		h := newHub(t, hubOpts{})
		t.Setenv("QZ_TEST_CLOCK_SKEW", "-10m") // the hub's clock is 10 minutes behind
		h.start()
		n := newNode(t, h, "doc-clock", nodeOpts{})
		r := runDoctor(t, n.cfg)
		r.wantExit(t, true)
		r.want(t, "clock", agent.VerdictFail, "10m0s ahead of the hub's", "synchronise this server's clock")
		r.want(t, "hub quic", agent.VerdictOK)
	})
}
