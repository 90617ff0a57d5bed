package e2e

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/internal/mariadbtest"
	"github.com/qianzhi/qianzhi/pkg/api"
)

// Markers of the calls section in docs/benchmarks.md: TestCallBenchmarks
// rewrites what is between them, and TestBenchmarks keeps it.
const (
	callsBegin = "<!-- calls: written by TestCallBenchmarks -->"
	callsEnd   = "<!-- /calls -->"
)

// callBench is what one transport's run measured.
type callBench struct {
	transport string
	lat       []time.Duration // each query's, application to checked answer
	qTook     time.Duration
	rates     []float64 // verifications a second, each run
	perCall   string    // CPU time per verification by process, last run
}

// TestCallBenchmarks measures query latency at 200 calls/s and sustained
// verifications a second, from an application through the consumer's
// local call API, the hub and the provider's agent to MariaDB and back,
// with the agents on QUIC and then on TLS/TCP. It runs with QZ_BENCH=1
// (make bench), about three minutes.
func TestCallBenchmarks(t *testing.T) {
	if os.Getenv("QZ_BENCH") == "" {
		t.Skip("the call benchmarks run with make bench (QZ_BENCH=1), not make test")
	}
	rows := envInt("QZ_BENCH_CALL_ROWS", 100000)
	srv := mariadbtest.Get(t)
	dbName := srv.NewDatabase(t)
	db := srv.Open(t, dbName)
	if _, err := db.Exec(householdDDL); err != nil {
		t.Fatal(err)
	}
	people := households(rows)
	insertHouseholds(t, db, people)
	var results []callBench
	for _, tr := range []string{"auto", "tcp"} {
		if only := os.Getenv("QZ_BENCH_TRANSPORT"); only != "" && only != tr {
			continue
		}
		results = append(results, benchCalls(t, tr, srv.DSN(dbName), people))
	}
	section := callsMarkdown(rows, results)
	t.Logf("\n%s", section)
	if err := writeSection("../docs/benchmarks.md", section); err != nil {
		t.Fatal(err)
	}
}

func insertHouseholds(t *testing.T, db *sql.DB, people []person) {
	t.Helper()
	for i := 0; i < len(people); i += 1000 {
		var q strings.Builder
		var args []any
		q.WriteString("INSERT INTO household (id_no, name, address, birth, income) VALUES ")
		for j, p := range people[i:min(i+1000, len(people))] {
			if j > 0 {
				q.WriteString(",")
			}
			q.WriteString("(?,?,?,?,?)")
			args = append(args, p.id, p.name, p.address, p.birth, p.income)
		}
		if _, err := db.Exec(q.String(), args...); err != nil {
			t.Fatal(err)
		}
	}
}

// benchCalls runs a hub and two agents on one transport and measures.
func benchCalls(t *testing.T, transport, dsn string, people []person) callBench {
	queries := envInt("QZ_BENCH_QUERIES", 6000) // at 200/s: 30 s
	verifySecs := envInt("QZ_BENCH_VERIFY_SECONDS", 15)
	runs := envInt("QZ_BENCH_VERIFY_RUNS", 3)
	workers := envInt("QZ_BENCH_VERIFY_WORKERS", 64)
	r := callBench{transport: transport}

	h := newHub(t, hubOpts{logLevel: "info"})
	h.start()
	prov := newNode(t, h, "gaj-"+transport, nodeOpts{resources: householdResource("gaj.huji-"+transport, dsn), logLevel: "info", transport: transport})
	cons := newNode(t, h, "mzj-"+transport, nodeOpts{logLevel: "info", transport: transport})
	prov.start()
	cons.start()
	defer endRun(prov.p, cons.p, h.p) // with QZ_CPUPROFILE, each writes its profile
	resource := "gaj.huji-" + transport
	waitFor(t, 15*time.Second, "the catalog entry", func() bool { return strings.Contains(h.central("catalog", "list"), resource) })
	h.central("catalog", "approve", resource, "--version", "1")
	for _, mode := range []string{"query", "verify"} {
		res := mustRun(t, "qz-agent", "apply", resource, "--fields", "id_no,name,address,birth", "--mode", mode, "--purpose", "基准测试", "--config", cons.cfg)
		id := strings.Fields(strings.Split(res, "\n")[1])[0]
		h.central("application", "approve", id)
		mustRun(t, "qz-agent", "approve", id, "--mask", "address=truncate(6)", "--rate", "100000", "--quota", "100000000", "--config", prov.cfg)
	}
	tokenB, err := os.ReadFile(filepath.Join(cons.state, "call-api.token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tokenB))
	var addr string
	waitFor(t, 10*time.Second, "the call API", func() bool { addr = cons.status().CallAPI; return addr != "" })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	// Bodies are made beforehand, as an application holds its data: the
	// machine's time goes to the calls.
	bodies := map[string][][]byte{}
	for i := range 4096 {
		p := people[(i*7919)%len(people)]
		q, _ := json.Marshal(map[string]any{"params": map[string]string{"id_no": p.id}})
		v, _ := json.Marshal(map[string]any{"params": map[string]string{"id_no": p.id}, "values": map[string]string{"name": p.name, "birth": p.birth}})
		bodies["query"], bodies["verify"] = append(bodies["query"], q), append(bodies["verify"], v)
	}
	do := func(mode string, i int) (time.Duration, error) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/"+mode+"/"+resource+"/by_id", bytes.NewReader(bodies[mode][i%4096]))
		req.Header.Set("Authorization", "Bearer "+token)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != http.StatusOK {
			return took, fmt.Errorf("%d %s", resp.StatusCode, out)
		}
		var a api.CallAnswer
		if err := json.Unmarshal(out, &a); err != nil || !a.Found || mode == "verify" && !(a.Matches["name"] && a.Matches["birth"]) {
			return took, fmt.Errorf("unexpected answer %s", out)
		}
		return took, nil
	}
	waitFor(t, 15*time.Second, "the first query", func() bool { _, err := do("query", 0); return err == nil })
	// Warm up both paths (connections, caches).
	for i := range 200 {
		do("query", i)
		do("verify", i)
	}

	// Query: open loop at 200 calls a second.
	var mu sync.Mutex
	var fails atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	tick := time.NewTicker(5 * time.Millisecond)
	qStart := time.Now()
	for i := range queries {
		<-tick.C
		wg.Go(func() {
			d, err := do("query", i)
			if err != nil {
				fails.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			mu.Lock()
			r.lat = append(r.lat, d)
			mu.Unlock()
		})
	}
	wg.Wait()
	tick.Stop()
	r.qTook = time.Since(qStart)
	if fails.Load() > 0 {
		t.Errorf("%s: %d of %d queries failed; first: %v", transport, fails.Load(), queries, firstErr.Load())
	}

	// Verify: closed loop, as many as the machine answers, in runs.
	procs := map[string]int{"hub": h.p.cmd.Process.Pid, "provider agent": prov.p.cmd.Process.Pid, "consumer agent": cons.p.cmd.Process.Pid,
		"this test (the application)": os.Getpid()}
	if out, err := exec.Command("pidof", "mariadbd").Output(); err == nil {
		if pid, err := strconv.Atoi(strings.Fields(string(out))[0]); err == nil {
			procs["MariaDB"] = pid
		}
	}
	for range runs {
		cpu0 := map[string]time.Duration{}
		for n, pid := range procs {
			cpu0[n] = cpuTime(pid)
		}
		var done, vfails atomic.Int64
		stop := time.Now().Add(time.Duration(verifySecs) * time.Second)
		vStart := time.Now()
		for w := range workers {
			wg.Go(func() {
				for i := w; time.Now().Before(stop); i += workers {
					if _, err := do("verify", i); err != nil {
						vfails.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					done.Add(1)
				}
			})
		}
		wg.Wait()
		if vfails.Load() > 0 {
			t.Errorf("%s: %d verifications failed; first: %v", transport, vfails.Load(), firstErr.Load())
		}
		r.rates = append(r.rates, float64(done.Load())/time.Since(vStart).Seconds())
		var perCall []string
		for _, n := range []string{"hub", "provider agent", "consumer agent", "MariaDB", "this test (the application)"} {
			if pid, ok := procs[n]; ok && done.Load() > 0 {
				perCall = append(perCall, fmt.Sprintf("%s %.0f µs", n, float64((cpuTime(pid)-cpu0[n]).Microseconds())/float64(done.Load())))
			}
		}
		r.perCall = strings.Join(perCall, ", ")
	}
	return r
}

func callsMarkdown(rows int, results []callBench) string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	name := map[string]string{"auto": "QUIC (the default)", "tcp": "TLS/TCP (`transport: tcp`)"}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## Query and verification calls\n\nMeasured by `make bench` (e2e/callbench_test.go, TestCallBenchmarks) on %s, %d × CPU, %s. "+
		"An application posts to the consumer agent's local call API. The agent calls the hub, and the hub hands the call to the provider agent's long poll. "+
		"The provider runs the declared query against MariaDB (a %d-row table, looked up by its primary key), masks or compares, seals a receipt and posts the answer. "+
		"The hub checks the receipt's key, call and digests, records the call and its audit record (one transaction for all calls that end meanwhile), and answers. "+
		"The consumer agent checks the receipt's seal and digests, then answers the application. "+
		"Everything runs on this one machine, the application included.\n\n", callsBegin, time.Now().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), rows)
	fmt.Fprintf(&b, "| agents' transport | query at 200 calls/s (open loop) | target | | verifications a second (64 concurrent callers; median of runs) | target | |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range results {
		p50, p99 := pct(r.lat, 0.5), pct(r.lat, 0.99)
		rates := slices.Clone(r.rates)
		slices.Sort(rates)
		med := 0.0
		if len(rates) > 0 {
			med = rates[len(rates)/2]
		}
		var each []string
		for _, x := range r.rates {
			each = append(each, fmt.Sprintf("%.0f", x))
		}
		fmt.Fprintf(&b, "| %s | %d calls in %.1f s: p50 %s, p99 %s, max %s | p50 ≤ 5 ms, p99 ≤ 20 ms | %s | %.0f (runs: %s) | ≥ 2,000 | %s |\n",
			name[r.transport], len(r.lat), r.qTook.Seconds(), ms(p50), ms(p99), ms(pct(r.lat, 1)),
			verdict(len(r.lat) > 0 && p50 <= 5*time.Millisecond && p99 <= 20*time.Millisecond), med, strings.Join(each, ", "), verdict(med >= 2000))
	}
	b.WriteString("\nCPU time per verification, by process (the last run):\n\n")
	for _, r := range results {
		fmt.Fprintf(&b, "- %s: %s\n", name[r.transport], r.perCall)
	}
	b.WriteString("\nThis machine is a shared virtual one: the same run varies by ±15% from one minute to the next, and MariaDB's own CPU time per call varies with it, " +
		"so compare runs taken together, not across days.\n\n")
	b.WriteString(callsEnd + "\n")
	return b.String()
}

// cpuTime is the CPU time (user and system) a process has used so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (in parentheses, may hold spaces):
	// utime and stime are the 12th and 13th, in clock ticks (100 a second).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

// writeSection replaces the calls section of a page (or adds it at the end).
func writeSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(path, []byte(withSection(string(old), section)), 0o644)
}

// withSection puts section in place of the page's calls section, or at
// its end.
func withSection(page, section string) string {
	i, j := strings.Index(page, callsBegin), strings.Index(page, callsEnd)
	if i >= 0 && j > i {
		return page[:i] + section + page[j+len(callsEnd)+1:]
	}
	return strings.TrimRight(page, "\n") + "\n\n" + section
}

// callsSection is the calls section of the page at path, or "".
func callsSection(path string) string {
	b, _ := os.ReadFile(path)
	page := string(b)
	i, j := strings.Index(page, callsBegin), strings.Index(page, callsEnd)
	if i < 0 || j < i {
		return ""
	}
	return page[i : j+len(callsEnd)+1]
}
