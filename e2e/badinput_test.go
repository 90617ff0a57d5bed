package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// expectFail runs a command that must fail with a clear one-line error
// containing every want.
func expectFail(t *testing.T, bin string, args []string, want ...string) {
	t.Helper()
	out, errOut, err := run(bin, args...)
	if err == nil {
		t.Fatalf("%s %s succeeded; want an error\n%s", bin, strings.Join(args, " "), out)
	}
	msg := strings.TrimSpace(errOut)
	if strings.Count(msg, "\n") > 0 {
		t.Errorf("error is not one line:\n%s", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not mention %q", msg, w)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}

	t.Run("misspelled agent key names file and line", func(t *testing.T) {
		cfg := write("agent.yaml", "hub: 127.0.0.1:7443\nstate_dir: /tmp/x\nspool:\n  qouta: 1GiB\n")
		expectFail(t, "qz-agent", []string{"config", "check", "--config", cfg}, "agent.yaml:4", `unknown key "qouta"`, `did you mean "quota"`)
	})
	t.Run("misspelled key inside a resource", func(t *testing.T) {
		cfg := write("agent2.yaml", "hub: 127.0.0.1:7443\nstate_dir: /tmp/x\nresources:\n  - id: r1\n    kind: file\n    path: /tmp\n    exclud: ['*.tmp']\n")
		expectFail(t, "qz-agent", []string{"config", "check", "--config", cfg}, "agent2.yaml:7", `unknown key "exclud"`, `did you mean "exclude"`)
	})
	t.Run("malformed yaml", func(t *testing.T) {
		cfg := write("agent3.yaml", "hub: [127.0.0.1\n")
		expectFail(t, "qz-agent", []string{"config", "check", "--config", cfg}, "agent3.yaml")
	})
	t.Run("bad value", func(t *testing.T) {
		cfg := write("central.yaml", "listen: nowhere\nstate_dir: /tmp/x\n")
		expectFail(t, "qz-central", []string{"config", "check", "--config", cfg}, "central.yaml", "listen")
	})
	t.Run("unreachable hub", func(t *testing.T) {
		port := freePort(t)
		cfg := write("agent4.yaml", fmt.Sprintf("hub: 127.0.0.1:%d\nstate_dir: %s/state4\n", port, dir))
		tok := "qz1.AAAAAAAAAAAAAAAAAAAAAA." + strings.Repeat("ab", 32)
		expectFail(t, "qz-agent", []string{"enroll", "--config", cfg, "--token", tok}, "hub unreachable", "firewall")
		if ents, _ := os.ReadDir(filepath.Join(dir, "state4", "identity")); len(ents) != 0 {
			t.Errorf("failed enrolment left files: %v", ents)
		}
	})
	t.Run("malformed token", func(t *testing.T) {
		cfg := write("agent5.yaml", "hub: 127.0.0.1:1\nstate_dir: /tmp/x5\n")
		expectFail(t, "qz-agent", []string{"enroll", "--config", cfg, "--token", "nonsense"}, "malformed enrolment token")
	})

	h := newHub(t, hubOpts{})
	h.start()
	t.Run("second agent on one state folder", func(t *testing.T) {
		n := newNode(t, h, "node-twice", nodeOpts{})
		n.start()
		waitFor(t, 10*time.Second, "the first agent to start", func() bool { return logHas(n.logPath(), "agent starting") })
		expectFail(t, "qz-agent", []string{"run", "--config", n.cfg}, "already running")
	})
	t.Run("wrong token", func(t *testing.T) {
		h.addNode("node-w")
		cfg := write("agent6.yaml", fmt.Sprintf("hub: %s\nstate_dir: %s/state6\n", h.addr, dir))
		// A well-formed token with the right CA pin but a secret the hub never issued.
		real := h.central("node", "token", "node-w")
		parts := strings.Split(real, ".")
		fake := parts[0] + ".BBBBBBBBBBBBBBBBBBBBBB." + parts[2]
		expectFail(t, "qz-agent", []string{"enroll", "--config", cfg, "--token", fake}, "unknown, already used or expired", "new token")
	})
	t.Run("full disk leaves state untouched and the token unspent", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to mount a tiny tmpfs")
		}
		mnt := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt).CombinedOutput(); err != nil {
			t.Skipf("cannot mount tmpfs here (%v: %s)", err, out)
		}
		defer exec.Command("umount", mnt).Run()
		os.WriteFile(filepath.Join(mnt, "filler"), make([]byte, 64<<10), 0o644) // fill it
		tok := h.addNode("node-f")
		cfg := write("agent7.yaml", fmt.Sprintf("hub: %s\nstate_dir: %s/state\n", h.addr, mnt))
		expectFail(t, "qz-agent", []string{"enroll", "--config", cfg, "--token", tok}, "disk")
		if ents, _ := os.ReadDir(filepath.Join(mnt, "state", "identity")); len(ents) != 0 {
			t.Errorf("failed enrolment left files: %v", ents)
		}
		// The token was not spent: it still enrols elsewhere.
		cfg2 := write("agent8.yaml", fmt.Sprintf("hub: %s\nstate_dir: %s/state8\n", h.addr, dir))
		mustRun(t, "qz-agent", "enroll", "--config", cfg2, "--token", tok)
	})
}
