package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const hukouCatalog = `    catalog:
      name: 户籍人口基本信息
      code: GA-2026-001
      format: table
      description: 本市户籍人口的基本信息
      department: 市公安局
      category: conditional
      legal_basis: 《中华人民共和国户口登记条例》
      scope: 全市政务部门
      frequency: daily
      timeliness: 2个工作日内
      modes: [batch, verify]
      fields:
        - {name: 身份证号, type: string}
        - {name: 姓名, type: string}
        - {name: 住址, type: string}
`

// TestCatalogReview: a provider declares a catalog entry with its
// resource; other departments find it only once the hub approved it;
// a changed entry waits for review while the approved one stays; a
// rejection needs a reason.
func TestCatalogReview(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	out := t.TempDir()
	prov := newNode(t, h, "gaj", nodeOpts{resources: fileResource("gaj.hukou", out, hukouCatalog)})
	cons := newNode(t, h, "mzj", nodeOpts{})
	prov.start()
	waitFor(t, 15*time.Second, "the entry to wait for review", func() bool {
		return strings.Contains(h.central("catalog", "list"), "pending")
	})
	search := func(words ...string) string {
		return mustRun(t, "qz-agent", append([]string{"catalog", "search", "--config", cons.cfg}, words...)...)
	}
	if s := search("户籍"); !strings.Contains(s, "no approved catalog entry") {
		t.Fatalf("a pending entry is visible:\n%s", s)
	}
	expectFail(t, "qz-central", []string{"catalog", "reject", "gaj.hukou", "--config", h.cfg}, "--reason")
	if s := h.central("catalog", "approve", "gaj.hukou"); !strings.Contains(s, "version 1: approved") {
		t.Fatalf("approve: %s", s)
	}
	s := search("户籍", "身份证号")
	if !strings.Contains(s, "gaj.hukou") || !strings.Contains(s, "conditional") || !strings.Contains(s, "身份证号,姓名,住址") {
		t.Fatalf("search finds:\n%s", s)
	}
	if s := search("户籍", "婚姻"); !strings.Contains(s, "no approved catalog entry") {
		t.Fatalf("every word must occur:\n%s", s)
	}

	// The provider changes the entry: version 2 waits, version 1 is shown.
	prov.p.stop()
	b, _ := os.ReadFile(prov.cfg)
	os.WriteFile(prov.cfg, []byte(strings.Replace(string(b), "户籍人口基本信息", "户籍人口基本信息（含迁入）", 1)), 0o644)
	prov.start()
	waitFor(t, 15*time.Second, "version 2 to wait for review", func() bool {
		return strings.Contains(h.central("catalog", "list"), "gaj.hukou  2        pending")
	})
	if s := search("迁入"); !strings.Contains(s, "no approved catalog entry") {
		t.Fatalf("version 2 is visible before review:\n%s", s)
	}
	h.central("catalog", "reject", "gaj.hukou", "--reason", "名称与编码不符")
	if s := h.central("catalog", "show", "gaj.hukou"); !strings.Contains(s, "名称与编码不符") || !strings.Contains(s, `"status": "approved"`) {
		t.Fatalf("versions:\n%s", s)
	}
	audit := h.central("audit", "list")
	for _, a := range []string{"catalog.submit", "catalog.approve", "catalog.reject"} {
		if !strings.Contains(audit, a) {
			t.Errorf("audit log lacks %s", a)
		}
	}
}

func TestCatalogBadEntry(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.yaml")
	bad := strings.Replace(hukouCatalog, "category: conditional", "category: restricted", 1)
	os.WriteFile(p, []byte("state_dir: "+dir+"\nresources:\n"+fileResource("gaj.hukou", dir, bad)), 0o644)
	expectFail(t, "qz-agent", []string{"config", "check", "--config", p}, "agent.yaml:3", `category "restricted"`, "unconditional, conditional or none")
	noBasis := strings.Replace(hukouCatalog, "      legal_basis: 《中华人民共和国户口登记条例》\n", "", 1)
	os.WriteFile(p, []byte("state_dir: "+dir+"\nresources:\n"+fileResource("gaj.hukou", dir, noBasis)), 0o644)
	expectFail(t, "qz-agent", []string{"config", "check", "--config", p}, "needs legal_basis")
}
