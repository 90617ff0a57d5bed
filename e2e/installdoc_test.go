package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/packaging/testroot"
)

// docBlock is a fenced block of a guide: its info string and its text.
type docBlock struct{ info, text string }

// shellBlocks returns the ```sh blocks of a markdown file, in order.
func shellBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []docBlock
	var cur *docBlock
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```sh"):
			cur = &docBlock{info: strings.TrimSpace(strings.TrimPrefix(line, "```"))}
		case cur != nil && line == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
	}
	return out
}

// rootShims stand in, inside the throwaway root, for what a server has and
// the root does not: sudo (the test runs as root there), and systemd, which
// cannot run here (PID 1 is not systemd). systemctl does what the installed
// unit file says: its ExecStartPre and ExecStart, as its User; journalctl
// shows what the agent wrote.
const rootShims = `set -euo pipefail
cd /root
sudo() {
	if [ "$1" = -u ]; then
		local u=$2; shift 2
		setpriv --reuid="$u" --regid="$u" --init-groups -- "$@"
	else
		"$@"
	fi
}
unitkey() { sed -n "s/^$2=//p" /usr/lib/systemd/system/$1.service | head -n 1; }
systemctl() {
	case "$1" in
	daemon-reload) ;;
	enable)
		[ "$2" = --now ] || { echo "systemctl $*: only enable --now is stood in for" >&2; return 1; }
		local u; u=$(unitkey "$3" User)
		setpriv --reuid="$u" --regid="$u" --init-groups -- $(unitkey "$3" ExecStartPre)
		setsid setpriv --reuid="$u" --regid="$u" --init-groups -- $(unitkey "$3" ExecStart) >/var/log/$3.log 2>&1 </dev/null &
		echo $! >/run/$3.pid ;;
	status) kill -0 "$(cat /run/$2.pid)" && echo "$2: active (running)" ;;
	reload) kill -HUP "$(cat /run/$2.pid)" ;;
	*) echo "systemctl $*: not stood in for" >&2; return 1 ;;
	esac
}
journalctl() { cat /var/log/qz-agent.log; }
`

// TestInstallGuide runs the sh blocks of docs/install.md in a throwaway
// Debian, against a hub and a second department on this machine, so the
// guide cannot drift from the product: install the .deb, enrol, configure
// a published folder and a subscription, check, doctor, start; then, once
// the hub operator has granted both ways, the first transfer arrives each
// way, and the day-to-day commands run.
func TestInstallGuide(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the packages and a throwaway Debian root (about a minute the first time)")
	}
	testroot.Need(t, "make", "git")
	root := testroot.New(t)
	dist := t.TempDir()
	if out, err := exec.Command("make", "-C", "..", "--no-print-directory", "package", "BIN="+t.TempDir(), "DIST="+dist).CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "qz-agent_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make package wrote %v", debs)
	}
	root.CopyIn(t, debs[0], "/root/"+filepath.Base(debs[0]))
	t.Cleanup(func() {
		if b, err := os.ReadFile(root.Path("/run/qz-agent.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(root.Path("/var/log/qz-agent.log"))
			t.Logf("the installed agent's log:\n%s", b)
		}
	})

	// The hub, and the other department (rsj), which shares notices with
	// this one and receives its reports.
	h := newHub(t, hubOpts{})
	h.start()
	notices, reports := filepath.Join(t.TempDir(), "notices"), filepath.Join(t.TempDir(), "reports")
	os.MkdirAll(notices, 0o755)
	noticeSums := writeFiles(t, notices, []fileSpec{{"通知.txt", 2000}})
	rsj := newNode(t, h, "rsj", nodeOpts{resources: fileResource("rsj.notices", notices, ""), subs: fileSub("gaj.reports", reports)})
	rsj.start()
	token := h.addNode("gaj")

	var before, after strings.Builder
	for _, b := range shellBlocks(t, "../docs/install.md") {
		switch b.info {
		case "sh env":
			// The guide's placeholders, set for this machine.
			before.WriteString("HUB=" + h.addr + "\nTOKEN=" + token + "\n")
		case "sh":
			before.WriteString(b.text)
		case "sh after-grant":
			after.WriteString(b.text)
		default:
			t.Fatalf("docs/install.md has a block %q: use sh, sh env or sh after-grant", b.info)
		}
	}
	if !strings.Contains(before.String(), "enable --now") || !strings.Contains(after.String(), "outbox") {
		t.Fatalf("docs/install.md lost its start or its first transfer:\n%s\n%s", before.String(), after.String())
	}
	run := func(script string) string {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		out, err := root.Command(ctx, "/bin/bash", "-c", rootShims+"HUB="+h.addr+"\n"+script).CombinedOutput()
		if err != nil {
			t.Fatalf("the guide's commands failed: %v\n%s", err, out)
		}
		return string(out)
	}
	out := run(before.String())
	for _, want := range []string{"qz-agent ", "enrolled as node gaj", "OK (1 resources, 1 subscriptions", "ok    hub quic", "ok    certificate", "qz-agent: active (running)"} {
		if !strings.Contains(out, want) {
			t.Errorf("the guide's output lacks %q:\n%s", want, out)
		}
	}

	// The hub operator's part: grant both ways.
	h.grant("gaj.reports", "rsj")
	h.grant("rsj.notices", "gaj")
	out = run(after.String())
	if !strings.Contains(out, "node") || !strings.Contains(out, "transport") && !strings.Contains(out, "quic") {
		t.Errorf("qz-agent status in the guide printed:\n%s", out)
	}
	waitFor(t, time.Minute, "hello.txt at the other department", func() bool {
		b, err := os.ReadFile(filepath.Join(reports, "hello.txt"))
		return err == nil && bytes.Equal(b, []byte("第一份报表\n"))
	})
	waitArrived(t, root.Path("/srv/qianzhi/inbox/rsj.notices"), noticeSums, time.Minute)
	st, err := os.Stat(root.Path("/srv/qianzhi/inbox/rsj.notices/通知.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid == 0 {
		t.Error("a received file belongs to root: the installed agent must run as the qianzhi user")
	}
	if !logHas(root.Path("/var/log/qz-agent.log"), `"msg":"configuration reloaded"`) {
		t.Error("the guide's systemctl reload did not reach the agent")
	}
}
