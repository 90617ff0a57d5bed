package e2e

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/qianzhi/qianzhi/central"
)

// scrape reads a Prometheus text exposition into "name{labels}" → value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", addr, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// metricsAddr is where a process's log says its metrics endpoint listens.
func metricsAddr(t *testing.T, log string) string {
	t.Helper()
	re := regexp.MustCompile(`"msg":"metrics endpoint listening","addr":"([^"]+)"`)
	var addr string
	waitFor(t, 15*time.Second, "the metrics endpoint in "+log, func() bool {
		b, _ := os.ReadFile(log)
		if m := re.FindSubmatch(b); m != nil {
			addr = string(m[1])
		}
		return addr != ""
	})
	return addr
}

// notifyListener stands in for systemd's notification socket.
func notifyListener(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return path, ch
}

// expectNotify waits for a notification that starts with prefix, skipping
// watchdog pings unless those are what is awaited.
func expectNotify(t *testing.T, ch <-chan string, prefix string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-ch:
			if strings.HasPrefix(m, prefix) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q notification within 30 s", prefix)
		}
	}
}

// TestOperations runs a hub and two agents as systemd would (a notification
// socket, a watchdog), moves a folder and a table, and checks what an
// operator sees: /metrics with real values on both sides, /healthz,
// status --json, and a SIGHUP that adds a resource while the hub
// connection stays up.
func TestOperations(t *testing.T) {
	dir := t.TempDir()
	srcFiles, dstFiles := filepath.Join(dir, "outbox"), filepath.Join(dir, "inbox")
	os.MkdirAll(srcFiles, 0o755)
	sums := writeFiles(t, srcFiles, []fileSpec{{"a.bin", 3 << 20}, {"b.txt", 1000}})
	srcDB, dstDB := filepath.Join(dir, "src.db"), filepath.Join(dir, "dst.db")
	db, err := sql.Open("sqlite", srcDB)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL, updated_at DATETIME(3) NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if _, err := db.Exec(`INSERT INTO people VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 minute'))`, i, fmt.Sprintf("人员%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	h := newHub(t, hubOpts{})
	hubSock, hubNotes := notifyListener(t)
	h.p = startEnv(t, "hub", filepath.Join(h.dir, "hub.log"), []string{"NOTIFY_SOCKET=" + hubSock}, "qz-central", "run", "--config", h.cfg)
	expectNotify(t, hubNotes, "READY=1")

	prov := newNode(t, h, "prov-1", nodeOpts{resources: fileResource("prov.reports", srcFiles, "")})
	cons := newNode(t, h, "cons-1", nodeOpts{subs: fileSub("prov.reports", dstFiles) +
		fmt.Sprintf("  - id: prov.people\n    kind: sqlite\n    dsn: %s\n    table: people\n    create_table: true\n", dstDB)})
	sock, notes := notifyListener(t)
	prov.p = startEnv(t, "agent prov-1", prov.logPath(), []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=1000000"}, "qz-agent", "run", "--config", prov.cfg)
	cons.start()
	expectNotify(t, notes, "READY=1")
	expectNotify(t, notes, "WATCHDOG=1")
	expectNotify(t, notes, "WATCHDOG=1") // pinged again: it keeps pinging while healthy

	h.grant("prov.reports", "cons-1")
	waitArrived(t, dstFiles, sums, time.Minute)

	// SIGHUP with a table resource added: it starts, its rows arrive, and
	// the provider's one hub connection is still the one it made at start.
	f, err := os.OpenFile(prov.cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "  - id: prov.people\n    kind: sqlite\n    dsn: %s\n    table: people\n    watermark: updated_at\n    lag: 0s\n    poll: 200ms\n", srcDB)
	f.Close()
	if err := prov.p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, notes, "RELOADING=1")
	expectNotify(t, notes, "READY=1")
	waitFor(t, 10*time.Second, "the reload in the log", func() bool { return logHas(prov.logPath(), `"msg":"configuration reloaded"`) })
	h.grant("prov.people", "cons-1")
	dst, err := sql.Open("sqlite", dstDB)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	waitFor(t, time.Minute, "500 rows at the consumer", func() bool {
		var n int
		dst.QueryRow(`SELECT COUNT(*) FROM people`).Scan(&n)
		return n == 500
	})

	ps, cs := prov.status(), cons.status()
	if ps.Metrics == "" || cs.Metrics == "" {
		t.Fatalf("status --json names no metrics address: provider %q, consumer %q", ps.Metrics, cs.Metrics)
	}
	if time.Until(ps.CertExpiry) < 300*24*time.Hour {
		t.Errorf("status reports the certificate ending %v; it was issued for a year", ps.CertExpiry)
	}
	pm, cm := scrape(t, ps.Metrics), scrape(t, cs.Metrics)
	if n := strings.Count(string(mustRead(t, prov.logPath())), `"msg":"connected to hub"`); n != 1 || pm["qz_hub_connects_total"] != 1 {
		t.Errorf("the provider connected %d times (metric %v); a reload must keep the connection", n, pm["qz_hub_connects_total"])
	}
	want := []struct {
		m    map[string]float64
		side string
		key  string
		min  float64
	}{
		{pm, "provider", `qz_batches_total{direction="out",resource="prov.reports"}`, 1},
		{pm, "provider", `qz_bytes_total{direction="out",resource="prov.reports"}`, 3 << 20 / 4},
		{pm, "provider", `qz_rows_total{direction="out",resource="prov.people"}`, 500},
		{pm, "provider", `qz_hub_connected`, 1},
		{pm, "provider", `qz_hub_transport{transport="quic"}`, 1},
		{pm, "provider", `qz_spool_quota_bytes`, 1 << 30},
		{pm, "provider", `qz_certificate_expiry_seconds`, 300 * 86400},
		{cm, "consumer", `qz_batches_total{direction="in",resource="prov.reports"}`, 1},
		{cm, "consumer", `qz_rows_total{direction="in",resource="prov.people"}`, 500},
		{cm, "consumer", `qz_bytes_total{direction="in",resource="prov.people"}`, 1000},
		{cm, "consumer", `qz_hub_connected`, 1},
	}
	for _, w := range want {
		if v, ok := w.m[w.key]; !ok || v < w.min {
			t.Errorf("%s metric %s = %v (present %v), want at least %v", w.side, w.key, v, ok, w.min)
		}
	}
	for _, key := range []string{`qz_lag_seconds{direction="in",resource="prov.people"}`, `qz_spool_bytes`, `qz_hub_transport{transport="tcp"}`, `qz_errors_total{kind="apply"}`} {
		if _, ok := cm[key]; !ok {
			t.Errorf("consumer metrics lack %s", key)
		}
	}
	if _, ok := pm[`qz_lag_seconds{direction="out",resource="prov.people"}`]; !ok {
		t.Errorf("provider metrics lack the spool lag of prov.people")
	}
	if v := cm[`qz_errors_total{kind="apply"}`] + cm[`qz_errors_total{kind="rejected"}`]; v != 0 {
		t.Errorf("consumer counted %v apply/rejection errors in a clean run", v)
	}

	// The hub takes a SIGHUP without stopping.
	h.p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the hub to note the SIGHUP", func() bool { return logHas(h.p.log, "SIGHUP ignored") })
	hm := scrape(t, metricsAddr(t, h.p.log))
	for key, min := range map[string]float64{
		`qz_batches_total{direction="in",resource="prov.people"}`:  1,
		`qz_batches_total{direction="out",resource="prov.people"}`: 1,
		`qz_rows_total{direction="out",resource="prov.people"}`:    500,
		`qz_nodes{status="active"}`:                                2,
		`qz_stored_bytes`:                                          1,
	} {
		if v, ok := hm[key]; !ok || v < min {
			t.Errorf("hub metric %s = %v (present %v), want at least %v", key, v, ok, min)
		}
	}
	if v, ok := hm[`qz_node_last_seen_seconds{node="cons-1"}`]; !ok || v > 60 {
		t.Errorf("hub last saw cons-1 %v s ago (present %v)", v, ok)
	}

	var hs central.HubStatus
	if err := json.Unmarshal([]byte(h.central("status", "--json")), &hs); err != nil {
		t.Fatalf("qz-central status --json: %v", err)
	}
	if hs.NodeCount["active"] != 2 || len(hs.Nodes) != 2 || hs.ActiveGrants != 2 || hs.Batches < 2 {
		t.Errorf("qz-central status: %+v", hs)
	}
	for _, n := range hs.Nodes {
		if time.Since(n.LastSeen) > time.Minute || time.Until(n.CertExpiry) < 300*24*time.Hour {
			t.Errorf("qz-central status: node %s last seen %v, certificate to %v", n.ID, n.LastSeen, n.CertExpiry)
		}
	}
	if out := h.central("status"); !strings.Contains(out, "2 active, 0 pending, 0 revoked") || !strings.Contains(out, "LAST SEEN") {
		t.Errorf("qz-central status:\n%s", out)
	}

	// /healthz answers with the node and its transport.
	resp, err := http.Get("http://" + ps.Metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var health map[string]any
	err = json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || health["status"] != "ok" || health["node"] != "prov-1" || health["transport"] != "quic" {
		t.Errorf("healthz: %d %v %v", resp.StatusCode, health, err)
	}

	// A reload of a broken file keeps what runs.
	os.WriteFile(prov.cfg, append(mustRead(t, prov.cfg), []byte("  - id: prov.broken\n    kind: nosuchkind\n")...), 0o644)
	prov.p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the refused reload in the log", func() bool {
		return logHas(prov.logPath(), `"msg":"configuration not reloaded"`)
	})
	if !strings.Contains(mustRun(t, "qz-agent", "status", "--config", cons.cfg), "metrics") {
		t.Error("status does not show the metrics address")
	}
	prov.p.cmd.Process.Signal(syscall.SIGTERM)
	expectNotify(t, notes, "STOPPING=1")
	select {
	case <-prov.p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop on SIGTERM")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}
