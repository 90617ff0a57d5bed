package e2e

import (
	"bytes"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

const citizensCatalog = `    catalog:
      name: 低保对象信息
      code: MZ-2026-007
      format: table
      department: 市民政局
      category: conditional
      legal_basis: 《社会救助暂行办法》
      frequency: daily
      modes: [batch]
      fields:
        - {name: 身份证号, type: string}
        - {name: 姓名, type: string}
        - {name: 住址, type: string}
        - {name: 收入, type: decimal}
`

// TestMaskedGrantAtTheSource: the provider approves an application with
// masking rules; every byte the hub receives is searched for the source's
// values and for the ungranted field, and none is there; the consumer
// holds the masked values.
func TestMaskedGrantAtTheSource(t *testing.T) {
	dir := t.TempDir()
	srcPath, dstPath := filepath.Join(dir, "src.db"), filepath.Join(dir, "dst.db")
	db, err := sql.Open("sqlite", srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE citizens (身份证号 VARCHAR(18) PRIMARY KEY, 姓名 VARCHAR(20) NOT NULL, 住址 VARCHAR(100), 收入 DECIMAL_TEXT(12,2), updated_at DATETIME(3) NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for i := range 200 {
		id, name, addr, income := fmt.Sprintf("1101011990%08d", i), fmt.Sprintf("居民%03d号", i), fmt.Sprintf("北京市海淀区中关村南大街%d号院", i), fmt.Sprintf("%d.%02d", 1000+i*7, i%100)
		if _, err := db.Exec(`INSERT INTO citizens VALUES (?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 minute'))`, id, name, addr, income); err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, id, name, addr, income)
	}
	h := newHub(t, hubOpts{})
	h.start()
	res := fmt.Sprintf("  - id: mzj.dibao\n    kind: sqlite\n    dsn: %s\n    table: citizens\n    watermark: updated_at\n    lag: 0s\n    poll: 200ms\n%s", srcPath, citizensCatalog)
	prov := newNode(t, h, "mzj", nodeOpts{resources: res})
	cons := newNode(t, h, "rsj", nodeOpts{subs: fmt.Sprintf("  - id: mzj.dibao\n    kind: sqlite\n    dsn: %s\n    table: dibao\n    create_table: true\n", dstPath)})
	prov.start()
	cons.start()
	waitFor(t, 15*time.Second, "the catalog entry", func() bool { return strings.Contains(h.central("catalog", "list"), "mzj.dibao") })
	h.central("catalog", "approve", "mzj.dibao", "--version", "1")
	out := mustRun(t, "qz-agent", "apply", "mzj.dibao", "--fields", "身份证号,姓名,住址", "--purpose", "就业补贴核对", "--config", cons.cfg)
	id := strings.Fields(strings.Split(out, "\n")[1])[0]
	h.central("application", "approve", id)
	expectFail(t, "qz-agent", []string{"approve", id, "--mask", "收入=null", "--config", prov.cfg}, `mask on field "收入", which the application does not ask for`)
	expectFail(t, "qz-agent", []string{"approve", id, "--mask", "姓名=blur", "--config", prov.cfg}, "use keep(A,B)")
	mustRun(t, "qz-agent", "approve", id, "--mask", "身份证号=hash", "--mask", "姓名=name", "--mask", "住址=truncate(6)", "--config", prov.cfg)

	dst, err := sql.Open("sqlite", dstPath)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	waitFor(t, 30*time.Second, "200 masked rows at the consumer", func() bool {
		var n int
		dst.QueryRow(`SELECT COUNT(*) FROM dibao WHERE length(身份证号) = 32 AND 姓名 = '居*****' AND 住址 = '北京市海淀区'`).Scan(&n)
		return n == 200
	})
	var cols int
	dst.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('dibao') WHERE name IN ('收入', 'updated_at')`).Scan(&cols)
	if cols != 0 {
		t.Fatal("the consumer's table has a column the grant does not give")
	}

	// Every byte the hub received, stored and decompressed.
	var payloads [][]byte
	filepath.WalkDir(h.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.Contains(p, "payload") {
			return nil
		}
		raw, _ := os.ReadFile(p)
		payloads = append(payloads, raw)
		if info, err := batch.ReadInfo(bytes.NewReader(raw), int64(len(raw))); err == nil {
			if body, err := info.Body(bytes.NewReader(raw)); err == nil {
				plain, _ := io.ReadAll(body)
				payloads = append(payloads, plain)
				hdr := fmt.Sprintf("%+v", info.Header.Schema)
				payloads = append(payloads, []byte(hdr))
			}
		}
		return nil
	})
	if len(payloads) < 3 {
		t.Fatalf("found %d payloads at the hub", len(payloads))
	}
	for _, p := range payloads {
		for _, s := range append(secrets, "收入") {
			if bytes.Contains(p, []byte(s)) {
				t.Fatalf("the hub received %q", s)
			}
		}
	}
}

// TestExtractionFailureShows: a grant the source cannot honour (a lossy
// mask on the key) stops that grant's extraction, and qz-agent status says
// why.
func TestExtractionFailureShows(t *testing.T) {
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "src.db")
	db, err := sql.Open("sqlite", srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE citizens (身份证号 VARCHAR(18) PRIMARY KEY, 姓名 VARCHAR(20), updated_at DATETIME(3) NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	db.Exec(`INSERT INTO citizens VALUES ('110101199003078515', '张三丰', '2026-01-01 00:00:00.000')`)
	h := newHub(t, hubOpts{})
	h.start()
	res := fmt.Sprintf("  - id: mzj.x\n    kind: sqlite\n    dsn: %s\n    table: citizens\n    watermark: updated_at\n    lag: 0s\n    poll: 200ms\n", srcPath)
	prov := newNode(t, h, "mzj", nodeOpts{resources: res})
	newNode(t, h, "rsj", nodeOpts{})
	prov.start()
	waitFor(t, 15*time.Second, "the resource", func() bool {
		_, _, err := run("qz-central", "grant", "add", "--resource", "mzj.x", "--consumer", "rsj", "--mask", "身份证号=idcard", "--config", h.cfg)
		return err == nil
	})
	waitFor(t, 15*time.Second, "status to show why extraction stopped", func() bool {
		for _, l := range prov.status().Stopped {
			if l.Side == "extract" && strings.Contains(l.Reason, "only hash keeps keys apart") {
				return true
			}
		}
		return false
	})
}
