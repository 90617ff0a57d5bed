package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLiveChanges: with both agents running, new, changed and deleted files
// at the provider reach the consumer (deletes only because the resource
// says so), and a file still being written is not sent half-done.
func TestLiveChanges(t *testing.T) {
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	sums := writeFiles(t, src, []fileSpec{{"keep.txt", 100}, {"change.txt", 200}, {"drop.txt", 300}})
	h.start()
	prov := newNode(t, h, "prov-l", nodeOpts{resources: strings.Replace(fileResource("prov.l", src, "    propagate_deletes: true\n"), "settle: 300ms", "settle: 2s", 1)})
	cons := newNode(t, h, "cons-l", nodeOpts{subs: fileSub("prov.l", dst)})
	prov.start()
	cons.start()
	h.grant("prov.l", "cons-l")
	waitArrived(t, dst, sums, time.Minute)

	// Changes while running: found by the watcher, sent once settled.
	more := writeFiles(t, src, []fileSpec{{"新建文件夹/new.txt", 5000}, {"change.txt", 999}})
	if err := os.Remove(filepath.Join(src, "drop.txt")); err != nil {
		t.Fatal(err)
	}
	// A file being written slowly: never visible at the consumer until whole.
	// Watch the target until the end: slow.bin must never show partly.
	const slowSize = 20 * 64 << 10
	checkWhole := watchWhole(t, filepath.Join(dst, "slow.bin"), slowSize)
	slow := filepath.Join(src, "slow.bin")
	f, err := os.Create(slow)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for i := range 20 {
		chunk[0] = byte(i)
		f.Write(chunk)
		f.Sync()
		time.Sleep(50 * time.Millisecond)
	}
	f.Close()
	sum, _, _ := hashFile(slow)
	more["slow.bin"] = sum
	waitArrived(t, dst, more, time.Minute)
	waitFor(t, 30*time.Second, "drop.txt to be deleted at the consumer", func() bool {
		_, err := os.Stat(filepath.Join(dst, "drop.txt"))
		return os.IsNotExist(err)
	})
	checkWhole()
	if got, _, _ := hashFile(filepath.Join(dst, "keep.txt")); got != sums["keep.txt"] {
		t.Error("an unchanged file changed at the consumer")
	}
}
