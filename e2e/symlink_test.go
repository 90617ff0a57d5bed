package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSymlinksNeverFollowed: with real agents, a published folder holding
// symlinks to the provider's own keys (a file link and a folder link) and a
// pipe sends only its regular files, and logs each skipped entry once over
// several rescans. At the consumer, a symlink planted in the target folder
// does not redirect a received file outside it: the line stops naming the
// link, and goes on once the link is removed.
func TestSymlinksNeverFollowed(t *testing.T) {
	h := newHub(t, hubOpts{})
	src, dst, outside := filepath.Join(t.TempDir(), "outbox"), filepath.Join(t.TempDir(), "inbox"), t.TempDir()
	os.MkdirAll(src, 0o755)
	os.MkdirAll(dst, 0o755)
	h.start()
	prov := newNode(t, h, "prov-l", nodeOpts{resources: fileResource("prov.l", src, "")})
	cons := newNode(t, h, "cons-l", nodeOpts{subs: fileSub("prov.l", dst)})
	identity := filepath.Join(prov.state, "identity")
	key, err := os.ReadFile(filepath.Join(identity, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(identity, "node.key"), filepath.Join(src, "key.pem")); err != nil {
		t.Fatal(err)
	}
	os.Symlink(identity, filepath.Join(src, "identity"))
	if err := syscall.Mkfifo(filepath.Join(src, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	sums := writeFiles(t, src, []fileSpec{{"ok.txt", 4000}})
	// The consumer's target holds a link where a folder of a received path
	// will be: the received file must not land in outside/.
	if err := os.Symlink(outside, filepath.Join(dst, "sub")); err != nil {
		t.Fatal(err)
	}
	prov.start()
	cons.start()
	h.grant("prov.l", "cons-l")
	waitArrived(t, dst, sums, 30*time.Second)

	sub := writeFiles(t, src, []fileSpec{{"sub/in-sub.txt", 3000}})
	waitFor(t, 30*time.Second, "the consumer's line to stop on the planted link", func() bool {
		for _, l := range cons.status().Stopped {
			if strings.Contains(l.Reason, "never followed") && strings.Contains(l.Reason, "remove it") {
				return true
			}
		}
		return false
	})
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("a received file was written through the planted link: %v", ents)
	}
	os.Remove(filepath.Join(dst, "sub"))
	waitArrived(t, dst, sub, 30*time.Second)

	// Several rescans (every 2 s) have passed by now.
	time.Sleep(5 * time.Second)
	filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, key[:40]) {
				t.Errorf("%s at the consumer holds the provider's key", p)
			}
			if d.Name() == "key.pem" || d.Name() == "node.key" || d.Name() == "pipe" {
				t.Errorf("%s arrived at the consumer", p)
			}
		}
		return nil
	})
	log, _ := os.ReadFile(prov.logPath())
	for _, name := range []string{"key.pem", "identity", "pipe"} {
		n := 0
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "not a regular file") && strings.Contains(line, `"path":"`+name+`"`) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d log lines for the skipped %s, want 1", n, name)
		}
	}
}
