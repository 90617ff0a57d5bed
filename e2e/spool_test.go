package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
)

// TestSpoolQuotaBackpressure: with the hub down the provider fills its spool
// up to the quota and pauses; when the hub returns everything arrives.
func TestSpoolQuotaBackpressure(t *testing.T) {
	const quota = 16 << 20
	h := newHub(t, hubOpts{})
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	h.start()
	prov := newNode(t, h, "prov-s", nodeOpts{resources: fileResource("prov.s", src, ""), quota: "16MiB"})
	cons := newNode(t, h, "cons-s", nodeOpts{subs: fileSub("prov.s", dst)})
	prov.start()
	cons.start()
	h.grant("prov.s", "cons-s")
	waitFor(t, 10*time.Second, "provider to learn the grant", func() bool { return logHas(prov.logPath(), "grants changed") })
	h.p.stop()

	var files []fileSpec
	for i := range 12 {
		files = append(files, fileSpec{fmt.Sprintf("part-%02d.bin", i), 5 << 20})
	}
	sums := writeFiles(t, src, files) // 60 MiB, far over the quota

	waitFor(t, time.Minute, "the provider to pause on a full spool", func() bool {
		return prov.counter(agent.CounterSpoolFullWaits) > 0
	})
	time.Sleep(time.Second) // a paused provider stays paused
	s := prov.status()
	if s.SpoolBytes > quota {
		t.Errorf("spool holds %d bytes, over its %d quota", s.SpoolBytes, quota)
	}
	var onDisk int64
	filepath.WalkDir(filepath.Join(prov.state, "spool"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			onDisk += fi.Size()
		}
		return nil
	})
	if onDisk > quota {
		t.Errorf("spool folder holds %d bytes, over its %d quota", onDisk, quota)
	}
	if s.Spooled == 0 {
		t.Error("nothing spooled while the hub was down")
	}

	h.start()
	waitArrived(t, dst, sums, 2*time.Minute)
}
