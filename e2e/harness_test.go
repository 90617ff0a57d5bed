// Package e2e runs the real binaries — a hub and agents on loopback, over
// real QUIC and TLS — and checks the system's promises from outside:
// files arrive byte-identical, kill -9 loses nothing, tampering is
// rejected and recorded, identities are enforced.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
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

var binDir string

func TestMain(m *testing.M) {
	flagShort := false
	for _, a := range os.Args {
		if a == "-test.short=true" || a == "-test.short" {
			flagShort = true
		}
	}
	if flagShort {
		fmt.Println("e2e: skipped in -short mode (these tests build and run the real binaries)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "qz-e2e-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for _, b := range []string{"qz-agent", "qz-central"} {
		pkg := "../agent/cmd/qz-agent"
		if b == "qz-central" {
			pkg = "../central/cmd/qz-central"
		}
		args := []string{"build", "-o", filepath.Join(dir, b)}
		env := append(os.Environ(), "CGO_ENABLED=0")
		if os.Getenv("QZ_E2E_RACE") != "" {
			// Race-detector builds of the binaries (needs cgo): for hunting
			// data races under the real end-to-end load.
			args = append(args, "-race")
			env = append(os.Environ(), "CGO_ENABLED=1")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b, err, out)
			os.Exit(1)
		}
	}
	code := mariadbtest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running binary whose output goes to a log file.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func start(t *testing.T, name, logPath string, bin string, args ...string) *proc {
	t.Helper()
	return startEnv(t, name, logPath, nil, bin, args...)
}

// startEnv is start with more environment variables.
func startEnv(t *testing.T, name, logPath string, env []string, bin string, args ...string) *proc {
	t.Helper()
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if logHas(logPath, "WARNING: DATA RACE") {
			t.Errorf("%s hit a data race; see its log", name)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("last lines of %s's log:\n%s", name, strings.Join(lines[max(0, len(lines)-25):], "\n"))
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop asks the process to shut down cleanly.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.t.Errorf("%s did not stop within 15s of SIGTERM; killing it", p.name)
		p.kill()
	}
}

// run runs a binary to completion and returns stdout, stderr and its error.
func run(bin string, args ...string) (string, string, error) {
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func mustRun(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, errOut, err := run(bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", bin, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// freePort finds a port free for both TCP and UDP on 127.0.0.1, below the
// kernel's ephemeral range so that no client socket takes it while a hub
// restarts on it.
func freePort(t *testing.T) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type hubOpts struct {
	noQUIC    bool
	retention string
	extra     string // more top-level YAML
	logLevel  string // default debug
}

// hub is a qz-central in its own folder.
type hub struct {
	t    *testing.T
	dir  string
	cfg  string
	addr string
	p    *proc
}

func newHub(t *testing.T, o hubOpts) *hub {
	t.Helper()
	dir := t.TempDir()
	h := &hub{t: t, dir: dir, cfg: filepath.Join(dir, "central.yaml")}
	h.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if o.retention == "" {
		o.retention = "1h"
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	yaml := fmt.Sprintf("listen: %s\nquic: %v\ntcp: true\nstate_dir: %s\nhosts: [127.0.0.1, localhost]\nretention: %s\nlog_level: %s\nmetrics_listen: 127.0.0.1:0\n%s",
		h.addr, !o.noQUIC, filepath.Join(dir, "state"), o.retention, o.logLevel, o.extra)
	if err := os.WriteFile(h.cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "qz-central", "init", "--config", h.cfg)
	return h
}

func (h *hub) start() {
	h.t.Helper()
	h.p = start(h.t, "hub", filepath.Join(h.dir, "hub.log"), "qz-central", "run", "--config", h.cfg)
	waitFor(h.t, 10*time.Second, "hub to listen", func() bool {
		select {
		case <-h.p.done:
			b, _ := os.ReadFile(h.p.log)
			h.t.Fatalf("hub exited at start:\n%s", b)
		default:
		}
		c, err := net.DialTimeout("tcp", h.addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (h *hub) central(args ...string) string {
	h.t.Helper()
	return strings.TrimSpace(mustRun(h.t, "qz-central", append(args, "--config", h.cfg)...))
}

func (h *hub) addNode(id string) string {
	return h.central("node", "add", id, "--name", "部门 "+id)
}

func (h *hub) payloadDir() string { return filepath.Join(h.dir, "state", "payload") }

// logHas reports whether a log file contains s.
func logHas(path, s string) bool {
	b, _ := os.ReadFile(path)
	return bytes.Contains(b, []byte(s))
}

// node is a qz-agent in its own folder.
type node struct {
	t     *testing.T
	id    string
	dir   string
	cfg   string
	state string
	p     *proc
}

type nodeOpts struct {
	transport string
	resources string // YAML list items under resources:
	subs      string // YAML list items under subscriptions:
	quota     string
	maxBytes  string
	hubAddr   string // dial this instead of the hub's own address
	extra     string // more top-level YAML
	logLevel  string // default debug
}

func newNode(t *testing.T, h *hub, id string, o nodeOpts) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, id: id, dir: dir, cfg: filepath.Join(dir, "agent.yaml"), state: filepath.Join(dir, "state")}
	if o.transport == "" {
		o.transport = "auto"
	}
	if o.quota == "" {
		o.quota = "1GiB"
	}
	if o.maxBytes == "" {
		o.maxBytes = "4MiB"
	}
	if o.hubAddr == "" {
		o.hubAddr = h.addr
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	yaml := fmt.Sprintf("hub: %s\ntransport: %s\nstate_dir: %s\nspool:\n  quota: %s\nbatch:\n  max_bytes: %s\npoll: 200ms\nlog_level: %s\nmetrics_listen: 127.0.0.1:0\ncall_api:\n  listen: 127.0.0.1:0\n%s",
		o.hubAddr, o.transport, n.state, o.quota, o.maxBytes, o.logLevel, o.extra)
	if o.resources != "" {
		yaml += "resources:\n" + o.resources
	}
	if o.subs != "" {
		yaml += "subscriptions:\n" + o.subs
	}
	if err := os.WriteFile(n.cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	tok := h.addNode(id)
	mustRun(t, "qz-agent", "enroll", "--config", n.cfg, "--token", tok)
	return n
}

func (n *node) logPath() string { return filepath.Join(n.dir, "agent.log") }

func (n *node) start() {
	n.t.Helper()
	n.p = start(n.t, "agent "+n.id, n.logPath(), "qz-agent", "run", "--config", n.cfg)
}

func (n *node) status() *agent.Status {
	n.t.Helper()
	out, errOut, err := run("qz-agent", "status", "--json", "--config", n.cfg)
	if err != nil {
		n.t.Fatalf("status: %v %s", err, errOut)
	}
	var s agent.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		n.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return &s
}

func (n *node) counter(name string) int64 { return n.status().Counters[name] }

// fileSpec is a file to create in a provider's folder.
type fileSpec struct {
	path string
	size int64
}

// writeFiles creates files of pseudo-random content (seeded by path) with
// an old modification time so they count as settled at once.
func writeFiles(t *testing.T, root string, files []fileSpec) map[string]string {
	t.Helper()
	sums := map[string]string{}
	old := time.Now().Add(-time.Hour)
	for _, f := range files {
		p := filepath.Join(root, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		seed := sha256.Sum256([]byte(f.path))
		rng := rand.NewChaCha8(seed)
		h := sha256.New()
		w := bufio.NewWriterSize(io.MultiWriter(fh, h), 1<<20)
		if _, err := io.CopyN(w, rng, f.size); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		os.Chtimes(p, old, old)
		sums[f.path] = hex.EncodeToString(h.Sum(nil))
	}
	return sums
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// arrived reports whether every file is in root with its hash.
func arrived(root string, sums map[string]string) bool {
	for p, want := range sums {
		got, _, err := hashFile(filepath.Join(root, filepath.FromSlash(p)))
		if err != nil || got != want {
			return false
		}
	}
	return true
}

// watchWhole watches path until the test ends and fails it if the file is
// ever visible with a size other than size: a partial file under its final
// name. Call the returned check to fail at once if that was seen so far.
func watchWhole(t *testing.T, path string, size int64) (check func()) {
	t.Helper()
	stop := make(chan struct{})
	bad := make(chan int64, 1)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if fi, err := os.Stat(path); err == nil && fi.Size() != size {
				select {
				case bad <- fi.Size():
				default:
				}
			}
		}
	}()
	check = func() {
		t.Helper()
		select {
		case n := <-bad:
			t.Fatalf("%s was visible with %d of %d bytes", filepath.Base(path), n, size)
		default:
		}
	}
	t.Cleanup(func() { close(stop) })
	return check
}

// waitArrived waits until every file is in place with its content.
func waitArrived(t *testing.T, root string, sums map[string]string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "files to arrive in "+root, func() bool { return arrived(root, sums) })
}

func fileResource(id, path string, extra string) string {
	return fmt.Sprintf("  - id: %s\n    kind: file\n    path: %s\n    settle: 300ms\n    rescan: 2s\n%s", id, path, extra)
}

func fileSub(id, path string) string {
	return fmt.Sprintf("  - id: %s\n    kind: file\n    path: %s\n", id, path)
}

// grant makes the operator grant resource to consumer once the provider
// has registered it, and returns the grant ID. The hub refuses this for a
// conditional or none resource: use approved for those.
func (h *hub) grant(resource, consumer string) string {
	h.t.Helper()
	var id string
	waitFor(h.t, 15*time.Second, "resource "+resource+" to be registered", func() bool {
		out, _, err := run("qz-central", "grant", "add", "--resource", resource, "--consumer", consumer, "--config", h.cfg)
		id = strings.TrimSpace(out)
		return err == nil
	})
	return id
}

// approved runs the application workflow, as a conditional resource
// needs (its provider refuses the operator's grant): cons applies for
// fields of resource in mode, the hub passes it on, prov approves it with
// approveArgs (--mask, --days, …). It returns the grant ID. The resource's
// catalog entry must be approved already.
func (h *hub) approved(prov, cons *node, resource, mode, fields string, approveArgs ...string) string {
	h.t.Helper()
	res := mustRun(h.t, "qz-agent", "apply", resource, "--fields", fields, "--mode", mode, "--purpose", "业务协同", "--config", cons.cfg)
	id := strings.Fields(strings.Split(res, "\n")[1])[0]
	h.central("application", "approve", id)
	res = mustRun(h.t, "qz-agent", append([]string{"approve", id, "--config", prov.cfg}, approveArgs...)...)
	for _, f := range strings.Fields(res) {
		if strings.HasPrefix(f, "g-") {
			return f
		}
	}
	h.t.Fatalf("no grant in the approval of %s:\n%s", id, res)
	return ""
}

var _ = context.Background
