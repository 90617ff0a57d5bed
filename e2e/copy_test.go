package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/pkg/api"
)

// copies reads qz-agent copy status --json.
func (n *node) copies() []api.Copy {
	n.t.Helper()
	out, errOut, err := run("qz-agent", "copy", "status", "--json", "--config", n.cfg)
	if err != nil {
		n.t.Fatalf("copy status: %v %s", err, errOut)
	}
	var cs []api.Copy
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		n.t.Fatalf("copy status --json: %v\n%s", err, out)
	}
	return cs
}

// copyNamed returns the copy with an ID, or nil.
func (n *node) copyNamed(id string) *api.Copy {
	for _, c := range n.copies() {
		if c.ID == id {
			return &c
		}
	}
	return nil
}

// startCopy runs qz-agent copy --detach and returns the copy's ID.
func startCopy(t *testing.T, n *node, resource, to string) string {
	t.Helper()
	out := mustRun(t, "qz-agent", "copy", resource, "--to", to, "--detach", "--config", n.cfg)
	f := strings.Fields(out)
	if len(f) < 2 || !strings.HasPrefix(f[1], "copy-") {
		t.Fatalf("qz-agent copy printed no copy ID: %q", out)
	}
	return f[1]
}

// TestCopyKillNine copies a 200,000-row table under an existing grant and
// kills the provider's agent with SIGKILL three times during the copy (and
// the consumer's once):
// every row is sealed exactly once, the bytes sent again are a couple of
// batches per kill at most, and verify finds the consumer's table
// identical (and, once changed behind the line, different).
func TestCopyKillNine(t *testing.T) {
	const rows = 200000
	s := newTableSetup(t, rows, "1MiB", "    limits: {rows_per_second: 40000}\n")
	s.prov.start()
	s.cons.start()
	s.h.grant("dept-a.people", "dept-b")
	waitTablesEqual(t, s.src, s.dst, 120*time.Second)
	before := s.prov.status().Counters

	// The consumer's copy drifts; the full copy must repair the changed row.
	if _, err := s.dst.Exec(`UPDATE people SET name = '走样' WHERE id = 4242`); err != nil {
		t.Fatal(err)
	}
	id := startCopy(t, s.prov, "dept-a.people", "dept-b")
	for i := 1; i <= 3; i++ {
		waitFor(t, 90*time.Second, fmt.Sprintf("the copy to pass %d%%", 25*i), func() bool {
			c := s.prov.copyNamed(id)
			return c != nil && c.Rows >= int64(rows*i/4)
		})
		s.prov.p.kill()
		s.prov.start()
		if i == 2 {
			// The consumer too, most likely while it loads a batch in
			// parts over two connections.
			s.cons.p.kill()
			s.cons.start()
		}
	}
	var c *api.Copy
	waitFor(t, 120*time.Second, "the copy to be done", func() bool {
		c = s.prov.copyNamed(id)
		return c != nil && c.State == api.CopyDone
	})
	waitTablesEqual(t, s.src, s.dst, 10*time.Second)
	if c.TotalRows != rows || c.Rows != rows {
		t.Fatalf("copy sealed %d rows of %d counted, want each of the %d rows exactly once", c.Rows, c.TotalRows, rows)
	}
	var parts int
	s.dst.QueryRow(`SELECT COUNT(*) FROM qz_applied_parts`).Scan(&parts)
	if parts != 0 {
		t.Fatalf("%d part records left at the consumer after the copy", parts)
	}
	after := s.prov.status().Counters
	resent := (after[agent.CounterUploadAttempted] - before[agent.CounterUploadAttempted]) - (after[agent.CounterUploaded] - before[agent.CounterUploaded])
	if bound := int64(3 * 2 * (1<<20 + 64<<10)); resent < 0 || resent > bound {
		t.Fatalf("%d bytes were uploaded again over three kills; a couple of 1MiB batches a kill is %d", resent, bound)
	}
	t.Logf("copy %s: %d rows in %d batches (%d bytes sealed, %d on the wire), %d bytes sent again over 3 kills", id, c.Rows, c.Batches, c.Bytes, c.Sent, resent)

	out := mustRun(t, "qz-agent", "verify", "dept-a.people", "--with", "dept-b", "--config", s.prov.cfg)
	if !strings.Contains(out, fmt.Sprintf("identical: dept-b holds the same %d rows", rows)) {
		t.Fatalf("verify after the copy:\n%s", out)
	}
	if _, err := s.dst.Exec(`UPDATE people SET name = '又走样' WHERE id = 777`); err != nil {
		t.Fatal(err)
	}
	out, _, err := run("qz-agent", "verify", "dept-a.people", "--with", "dept-b", "--config", s.prov.cfg)
	if err == nil || !strings.Contains(out, "DIFFERENT: 1 of") {
		t.Fatalf("verify after a change at the consumer: err %v\n%s", err, out)
	}
	if list := s.h.central("copy", "list"); !strings.Contains(list, id) || !strings.Contains(list, "done") {
		t.Fatalf("the hub does not show the copy done:\n%s", list)
	}
	if audit := s.h.central("audit", "list"); !strings.Contains(audit, "copy.start") || !strings.Contains(audit, "copy.done") {
		t.Fatalf("the copy's start and end are not audited:\n%s", audit)
	}
}

// filePair is a provider publishing a folder and a consumer receiving it.
func filePair(t *testing.T, resourceExtra string, files []fileSpec) (*hub, *node, *node, string, map[string]string) {
	h := newHub(t, hubOpts{})
	h.start()
	src, dst := t.TempDir(), t.TempDir()
	sums := writeFiles(t, src, files)
	prov := newNode(t, h, "dept-a", nodeOpts{resources: fileResource("dept-a.files", src, resourceExtra)})
	cons := newNode(t, h, "dept-b", nodeOpts{subs: fileSub("dept-a.files", dst)})
	prov.start()
	cons.start()
	h.grant("dept-a.files", "dept-b")
	waitArrived(t, dst, sums, 60*time.Second)
	return h, prov, cons, dst, sums
}

// TestCopyThrottled copies 2 MiB of incompressible files under a 512 KiB/s
// limit: the bytes uploaded over the copy, divided by its duration, stay
// under the limit (unthrottled, loopback moves them in a fraction of a
// second).
func TestCopyThrottled(t *testing.T) {
	const limit = 512 << 10
	_, prov, _, _, _ := filePair(t, "    limits: {bytes_per_second: 512KiB}\n",
		[]fileSpec{{"a.bin", 1 << 20}, {"b.bin", 512 << 10}, {"c/d.bin", 512 << 10}})
	before := prov.counter(agent.CounterUploadAttempted)
	t0 := time.Now()
	id := startCopy(t, prov, "dept-a.files", "dept-b")
	var c *api.Copy
	waitFor(t, 60*time.Second, "the throttled copy to be done", func() bool {
		c = prov.copyNamed(id)
		return c != nil && c.State == api.CopyDone
	})
	el := time.Since(t0)
	sent := prov.counter(agent.CounterUploadAttempted) - before
	if sent < 2<<20 || c.Files != 3 {
		t.Fatalf("the copy uploaded %d bytes and %d files; the folder holds 2MiB in 3 files", sent, c.Files)
	}
	rate := float64(sent) / el.Seconds()
	t.Logf("throttled copy: %d bytes in %s = %.0f B/s (limit %d)", sent, el.Round(time.Millisecond), rate, limit)
	if rate > limit*1.25 {
		t.Fatalf("the copy ran at %.0f B/s, over its limit of %d B/s", rate, limit)
	}
}

// TestCopyWindow asks for a copy before its window opens: it waits,
// saying why, and completes once the window is open.
func TestCopyWindow(t *testing.T) {
	opens := time.Now().Add(12 * time.Second).Truncate(time.Second)
	win := opens.Format("15:04:05") + "-" + opens.Add(time.Hour).Format("15:04:05")
	_, prov, _, dst, _ := filePair(t, "    limits: {window: \""+win+"\"}\n", []fileSpec{{"x.bin", 100 << 10}, {"y/z.bin", 10 << 10}})
	if time.Now().After(opens.Add(-3 * time.Second)) {
		t.Skip("the setup took too long to ask for the copy before its window opens; nothing is shown")
	}
	id := startCopy(t, prov, "dept-a.files", "dept-b")
	waitFor(t, 10*time.Second, "the copy to wait for its window", func() bool {
		c := prov.copyNamed(id)
		return c != nil && c.State == api.CopyWaiting && strings.Contains(c.Reason, "outside the copy window "+win)
	})
	var c *api.Copy
	waitFor(t, 40*time.Second, "the copy to be done", func() bool {
		c = prov.copyNamed(id)
		return c != nil && c.State == api.CopyDone
	})
	if c.Finished.Before(opens) || c.Files != 2 {
		t.Fatalf("copy finished at %s with %d files; its window opened at %s", c.Finished, c.Files, opens)
	}
	out := mustRun(t, "qz-agent", "copy", "status", "--config", prov.cfg)
	if !strings.Contains(out, id) || !strings.Contains(out, "done") {
		t.Fatalf("copy status:\n%s", out)
	}

	// The folder verifies file by file; a changed, a missing and an extra
	// file at the consumer each show.
	out = mustRun(t, "qz-agent", "verify", "dept-a.files", "--with", "dept-b", "--config", prov.cfg)
	if !strings.Contains(out, "identical: dept-b holds the same 2 files of dept-a.files") {
		t.Fatalf("verify after the copy:\n%s", out)
	}
	os.WriteFile(filepath.Join(dst, "x.bin"), []byte("changed"), 0o644)
	os.Remove(filepath.Join(dst, "y", "z.bin"))
	os.WriteFile(filepath.Join(dst, "stray.txt"), []byte("not sent"), 0o644)
	out, _, err := run("qz-agent", "verify", "dept-a.files", "--with", "dept-b", "--config", prov.cfg)
	for _, want := range []string{"DIFFERENT", "differs: x.bin", "missing: y/z.bin", "extra: stray.txt"} {
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("verify after changes at the consumer: err %v, want %q in:\n%s", err, want, out)
		}
	}
}

// TestCopyBadInput: each mistake is one clear line and a non-zero exit.
func TestCopyBadInput(t *testing.T) {
	h, prov, _, _, _ := filePair(t, "", []fileSpec{{"x.bin", 10 << 10}})
	newNode(t, h, "dept-c", nodeOpts{})
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"copy", "dept-a.files", "--to", "dept-c"}, "node dept-c has no active grant for dept-a.files"},
		{[]string{"copy", "dept-a.files", "--to", "dept-x"}, "node dept-x is not enrolled at the hub"},
		{[]string{"copy", "dept-z.other", "--to", "dept-b"}, "resource dept-z.other is not published by this agent"},
		{[]string{"copy", "dept-a.files"}, "--to NODE is required"},
		{[]string{"verify", "dept-a.files", "--with", "dept-c"}, "node dept-c has no active grant for dept-a.files"},
		{[]string{"verify", "dept-a.files"}, "--with NODE is required"},
	} {
		_, errOut, err := run("qz-agent", append(c.args, "--config", prov.cfg)...)
		if err == nil || !strings.Contains(errOut, c.want) || strings.Count(strings.TrimSpace(errOut), "\n") > 1 {
			t.Errorf("qz-agent %s: err %v, stderr %q; want one line with %q", strings.Join(c.args, " "), err, errOut, c.want)
		}
	}
	for _, c := range []struct{ yaml, want string }{
		{"limits:\n  window: \"22:00-25:00\"\n", `bad.yaml:3: window "22:00-25:00": want HH:MM-HH:MM`},
		{"resources:\n  - id: dept-a.files\n    kind: file\n    path: /tmp\n    limits: {window: \"10pm-6am\"}\n", `bad.yaml:6: window "10pm-6am": want HH:MM-HH:MM`},
		{"resources:\n  - id: dept-a.files\n    kind: file\n    path: /tmp\n    copy: {every: 10m}\n", "copy.every 10m0s is too short"},
	} {
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(bad, []byte("state_dir: /tmp/x\n"+c.yaml), 0o644)
		_, errOut, err := run("qz-agent", "config", "check", "--config", bad)
		if err == nil || !strings.Contains(errOut, c.want) {
			t.Errorf("config check: err %v, stderr %q; want %q", err, errOut, c.want)
		}
	}
}
