package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/packaging/testroot"
)

// netns is a network namespace of the test's own, with only a loopback
// interface, in which a firewall drops what the test says.
type netns struct {
	t    *testing.T
	name string
	ip   string // the ip command
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a network namespace with a firewall needs root")
	}
	tools := testroot.Need(t, "ip", "nft")
	n := &netns{t: t, name: fmt.Sprintf("qz-test-%d", rand.IntN(1<<30)), ip: tools[0]}
	if out, err := exec.Command(n.ip, "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Skipf("cannot make a network namespace here (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command(n.ip, "netns", "del", n.name).Run() })
	n.must(tools[0], "link", "set", "lo", "up")
	return n
}

// cmd is a command run in the namespace; bin is a path or a name in bin/.
func (n *netns) cmd(bin string, args ...string) *exec.Cmd {
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(binDir, bin)
	}
	return exec.Command(n.ip, append([]string{"netns", "exec", n.name, bin}, args...)...)
}

func (n *netns) run(bin string, args ...string) (string, string, error) {
	cmd := n.cmd(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (n *netns) must(bin string, args ...string) string {
	n.t.Helper()
	out, errOut, err := n.run(bin, args...)
	if err != nil {
		n.t.Fatalf("in the namespace: %s %s: %v\n%s%s", bin, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// start runs a long-lived command in the namespace, logging to logPath.
func (n *netns) start(name, logPath, bin string, args ...string) *proc {
	n.t.Helper()
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	cmd := n.cmd(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	p := &proc{t: n.t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	n.t.Cleanup(func() {
		p.kill()
		if n.t.Failed() {
			b, _ := os.ReadFile(logPath)
			n.t.Logf("%s's log:\n%s", name, b)
		}
	})
	return p
}

// TestUDPDroppedByFirewall runs a hub and two agents where a firewall
// (nftables, in a network namespace of the test's own) silently drops UDP
// to the hub's port, as many government networks do: enrolment and
// transfers fall back to TLS/TCP by themselves, and qz-agent doctor says
// that UDP seems blocked while TCP works.
func TestUDPDroppedByFirewall(t *testing.T) {
	ns := newNetns(t)
	h := newHub(t, hubOpts{})
	port := strings.Split(h.addr, ":")[1]
	nft := testroot.Need(t, "nft")[0]
	ns.must(nft, "add", "table", "inet", "qz")
	// Dropped on the way in, as a middlebox does: the sender sees no
	// error, only silence (a drop on the way out would fail its sendmsg).
	ns.must(nft, "add", "chain", "inet", "qz", "in", "{ type filter hook input priority 0 ; }")
	ns.must(nft, "add", "rule", "inet", "qz", "in", "udp", "dport", port, "drop")
	h.p = ns.start("hub", filepath.Join(h.dir, "hub.log"), "qz-central", "run", "--config", h.cfg)
	waitFor(t, 10*time.Second, "the hub to listen in the namespace", func() bool {
		_, _, err := ns.run("/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+port)
		return err == nil
	})

	src, dst := filepath.Join(t.TempDir(), "outbox"), filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"报表.csv", 300 << 10}})
	agents := map[string]string{}
	for id, yaml := range map[string]string{
		"fw-prov": "resources:\n" + fileResource("fw.reports", src, ""),
		"fw-cons": "subscriptions:\n" + fileSub("fw.reports", dst),
	} {
		state := filepath.Join(t.TempDir(), "state")
		cfg := writeAgentConfig(t, h.addr, state, "poll: 200ms\nmetrics_listen: off\ncall_api: {listen: \"off\"}\nlog_level: debug\n"+yaml)
		ns.must("qz-agent", "enroll", "--config", cfg, "--token", h.addNode(id))
		agents[id] = cfg
	}

	out, errOut, err := ns.run("qz-agent", "doctor", "--json", "--config", agents["fw-prov"])
	if err != nil {
		t.Fatalf("doctor failed with only UDP dropped: %v\n%s%s", err, out, errOut)
	}
	var fs []agent.Finding
	if err := jsonUnmarshal(out, &fs); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	got := map[string]agent.Finding{}
	for _, f := range fs {
		got[f.Check] = f
	}
	if f := got["hub quic"]; f.Verdict != agent.VerdictWarn || !strings.Contains(f.Detail, "UDP seems blocked") || !strings.Contains(f.Fix, "open UDP port "+port) {
		t.Errorf("hub quic with UDP dropped: %+v", f)
	}
	if f := got["hub tcp"]; f.Verdict != agent.VerdictOK {
		t.Errorf("hub tcp with UDP dropped: %+v", f)
	}

	prov := ns.start("agent fw-prov", filepath.Join(t.TempDir(), "prov.log"), "qz-agent", "run", "--config", agents["fw-prov"])
	cons := ns.start("agent fw-cons", filepath.Join(t.TempDir(), "cons.log"), "qz-agent", "run", "--config", agents["fw-cons"])
	h.grant("fw.reports", "fw-cons")
	waitArrived(t, dst, sums, 2*time.Minute)
	for _, p := range []*proc{prov, cons} {
		if !logHas(p.log, `"transport":"tcp"`) || logHas(p.log, `"msg":"connected to hub","node":"fw-prov","hub":"`+h.addr+`","transport":"quic"`) {
			t.Errorf("%s did not fall back to TLS/TCP; see its log", p.name)
		}
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
