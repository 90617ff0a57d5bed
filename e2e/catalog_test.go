package e2e

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
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
	expectFail(t, "qz-central", []string{"catalog", "approve", "gaj.hukou", "--config", h.cfg}, "--version N")
	if s := h.central("catalog", "approve", "gaj.hukou", "--version", "1"); !strings.Contains(s, "version 1: approved") {
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
	h.central("catalog", "reject", "gaj.hukou", "--version", "2", "--reason", "名称与编码不符")
	if s := h.central("catalog", "show", "gaj.hukou"); !strings.Contains(s, "名称与编码不符") || !strings.Contains(s, `"status": "approved"`) {
		t.Fatalf("versions:\n%s", s)
	}
	audit := h.central("audit", "list")
	for _, a := range []string{"catalog.submit", "catalog.approve", "catalog.reject"} {
		if !strings.Contains(audit, a) {
			t.Errorf("audit log lacks %s", a)
		}
	}
	// The commands went through the running hub's admin socket, which
	// names the user who ran them.
	me, _ := user.Current()
	if !strings.Contains(audit, "local:"+me.Username+"  catalog.approve") {
		t.Errorf("the approval is not recorded as local:%s:\n%s", me.Username, audit)
	}
	fi, err := os.Stat(filepath.Join(h.dir, "state", "admin", "admin.sock"))
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(h.dir, "state", "admin")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("admin socket folder: %v %v", fi, err)
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

// TestApplicationWorkflow: a department applies for a conditional
// resource; the hub checks it, the provider approves it through its own
// agent, and the data flows under the grant that results. Each mistake is
// refused with a clear error and audited.
func TestApplicationWorkflow(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	out, in := t.TempDir(), t.TempDir()
	sums := writeFiles(t, out, []fileSpec{{"户籍/2026.csv", 100 << 10}})
	prov := newNode(t, h, "gaj", nodeOpts{resources: fileResource("gaj.hukou", out, hukouCatalog)})
	cons := newNode(t, h, "mzj", nodeOpts{subs: fileSub("gaj.hukou", in)})
	other := newNode(t, h, "wjw", nodeOpts{})
	prov.start()
	cons.start()
	waitFor(t, 15*time.Second, "the catalog entry", func() bool { return strings.Contains(h.central("catalog", "list"), "gaj.hukou") })
	h.central("catalog", "approve", "gaj.hukou", "--version", "1")
	agent := func(n *node, args ...string) []string { return append(args, "--config", n.cfg) }

	// Mistakes first.
	expectFail(t, "qz-agent", agent(cons, "apply", "gaj.nothing", "--fields", "姓名", "--purpose", "低保"), "gaj.nothing is not in the catalog")
	expectFail(t, "qz-agent", agent(cons, "apply", "gaj.hukou", "--fields", "姓名,婚姻状况", "--purpose", "低保"), `field "婚姻状况" is not in the catalog entry`, "身份证号, 姓名, 住址")
	expectFail(t, "qz-agent", agent(cons, "apply", "gaj.hukou", "--fields", "姓名", "--mode", "query", "--purpose", "低保"), `not offered in mode "query"`)

	expectFail(t, "qz-agent", agent(cons, "apply", "gaj.hukou", "--fields", "身份证号,姓名", "--purpose", "低保"), "is a folder", "apply for all its fields")
	res := mustRun(t, "qz-agent", agent(cons, "apply", "gaj.hukou", "--fields", "身份证号,姓名,住址", "--purpose", "低保资格审核", "--scenario", "窗口办理")...)
	id := strings.Fields(strings.Split(res, "\n")[1])[0]
	if !strings.HasPrefix(id, "a-") || !strings.Contains(res, "hub_review") {
		t.Fatalf("apply: %s", res)
	}
	// The provider cannot decide before the hub has checked.
	expectFail(t, "qz-agent", agent(prov, "approve", id), "not waiting for its provider")
	if s := h.central("application", "approve", id); !strings.Contains(s, "passed to the provider gaj") {
		t.Fatalf("hub review: %s", s)
	}
	expectFail(t, "qz-agent", agent(other, "approve", id), "not found")
	expectFail(t, "qz-agent", agent(cons, "approve", id), "not the provider")
	expectFail(t, "qz-agent", agent(prov, "reject", id), "needs a reason")
	expectFail(t, "qz-agent", agent(prov, "approve", id, "--mask", "姓名=name"), "cannot be masked")
	if s := mustRun(t, "qz-agent", agent(prov, "applications")...); !strings.Contains(s, "provider: decide") {
		t.Fatalf("the provider's list:\n%s", s)
	}
	res = mustRun(t, "qz-agent", agent(prov, "approve", id)...)
	if !strings.Contains(res, "approved") || !strings.Contains(res, "g-") {
		t.Fatalf("provider approve: %s", res)
	}
	waitArrived(t, in, sums, 30*time.Second)
	show := h.central("application", "show", id)
	for _, st := range []string{"submitted", "hub_review", "provider_review", "approved"} {
		if !strings.Contains(show, `"state": "`+st+`"`) {
			t.Errorf("history lacks %s:\n%s", st, show)
		}
	}
	audit := h.central("audit", "list")
	for _, a := range []string{"application.submit", "application.hub_approve", "application.provider_approve", "grant.add", "application.refuse", "batch.store", "batch.deliver", "batch.receipt"} {
		if !strings.Contains(audit, a) {
			t.Errorf("audit lacks %s", a)
		}
	}
	if n := strings.Count(audit, "application.refuse"); n < 8 {
		t.Errorf("%d refusals audited, want 6:\n%s", n, audit)
	}
	if s := h.central("report", "overdue"); !strings.Contains(s, "0 overdue") {
		t.Errorf("overdue report: %s", s)
	}

	// Feedback (纠错): the consumer reports an error, the provider answers.
	expectFail(t, "qz-agent", agent(other, "feedback", "report", "gaj.hukou", "--record", "身份证号=110101199003078515", "--field", "住址", "--problem", "地址已变更"), "holds no active grant")
	expectFail(t, "qz-agent", agent(cons, "feedback", "report", "gaj.hukou", "--record", "身份证号=110101199003078515", "--field", "婚姻", "--problem", "x"), `field "婚姻" is not in the catalog entry`)
	res = mustRun(t, "qz-agent", agent(cons, "feedback", "report", "gaj.hukou", "--record", "身份证号=110101199003078515", "--field", "住址", "--problem", "地址已变更", "--suggestion", "海淀区学院路1号")...)
	fid := strings.Fields(strings.Split(res, "\n")[1])[0]
	if !strings.HasPrefix(fid, "f-") {
		t.Fatalf("feedback: %s", res)
	}
	if s := mustRun(t, "qz-agent", agent(prov, "feedback", "list")...); !strings.Contains(s, "to answer") || !strings.Contains(s, "地址已变更") {
		t.Fatalf("the provider's feedback list:\n%s", s)
	}
	expectFail(t, "qz-agent", agent(cons, "feedback", "answer", fid, "--text", "已更正"), "not the provider")
	expectFail(t, "qz-agent", agent(prov, "feedback", "answer", fid), "needs text")
	mustRun(t, "qz-agent", agent(prov, "feedback", "answer", fid, "--text", "已按户籍变更记录更正")...)
	if s := mustRun(t, "qz-agent", agent(cons, "feedback", "list")...); !strings.Contains(s, "已按户籍变更记录更正") {
		t.Fatalf("the consumer does not see the answer:\n%s", s)
	}
	audit = h.central("audit", "list")
	for _, a := range []string{"feedback.submit", "feedback.answer"} {
		if !strings.Contains(audit, a) {
			t.Errorf("audit lacks %s", a)
		}
	}
}

// TestRevokeWithDestruction revokes a grant during a running transfer: at
// most the batch in flight still arrives, the consumer destroys every file
// it received, and its signed destruction receipt reaches the hub.
func TestRevokeWithDestruction(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	out, in := t.TempDir(), t.TempDir()
	var specs []fileSpec
	for i := range 40 {
		specs = append(specs, fileSpec{fmt.Sprintf("档案/%02d.bin", i), 1 << 20})
	}
	writeFiles(t, out, specs)
	prov := newNode(t, h, "gaj", nodeOpts{resources: fileResource("gaj.files", out, ""), maxBytes: "1MiB"})
	cons := newNode(t, h, "mzj", nodeOpts{subs: fileSub("gaj.files", in)})
	prov.start()
	cons.start()
	g := h.grant("gaj.files", "mzj")
	applied := func() int64 { return cons.status().Applied[g] }
	waitFor(t, 30*time.Second, "a few batches applied", func() bool { return applied() >= 3 })
	h.central("grant", "revoke", g, "--destroy")
	atRevoke := applied()
	waitFor(t, 30*time.Second, "the destruction receipt at the hub", func() bool {
		return strings.Contains(h.central("grant", "list"), "(signed receipt)")
	})
	if n := applied(); n > atRevoke+1 {
		t.Fatalf("%d batches applied after the revocation (at most the one in flight may be)", n-atRevoke)
	}
	if atRevoke >= 40 {
		t.Fatal("the transfer had finished before the revocation; the test proves nothing")
	}
	var left []string
	filepath.WalkDir(in, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Fatalf("files left after destruction: %v", left)
	}
	audit := h.central("audit", "list")
	if !strings.Contains(audit, "grant.destroy") || !strings.Contains(audit, "files received under grant "+g) {
		t.Fatalf("audit log lacks the destruction:\n%s", audit)
	}
	if !logHas(cons.logPath(), "destroyed the data received under an ended grant") {
		t.Fatal("the consumer did not log the destruction")
	}

	// The provider fetches the destruction receipt and checks its seal
	// itself; a receipt changed at the hub fails the check and the command.
	var ds []agent.DestructionLine
	if err := json.Unmarshal([]byte(mustRun(t, "qz-agent", "receipts", "--destroyed", "--json", "--config", prov.cfg)), &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].Grant != g || !ds[0].Verified || ds[0].Consumer != "mzj" || !strings.Contains(ds[0].What, "files") {
		t.Fatalf("the provider's view of the destruction receipts: %+v", ds)
	}
	tamperHubDB(t, h, `UPDATE destructions SET receipt = CAST(replace(CAST(receipt AS TEXT), '"what":"', '"what":"0 ') AS BLOB)`)
	stdout, stderr, err := run("qz-agent", "receipts", "--destroyed", "--config", prov.cfg)
	if err == nil || !strings.Contains(stderr, "1 of 1 destruction receipts failed their check") || !strings.Contains(stdout, "signature") {
		t.Fatalf("a destruction receipt changed at the hub: err %v\n%s%s", err, stdout, stderr)
	}
}

// tamperHubDB changes the hub's database behind its back, as someone with
// access to its disk could.
func tamperHubDB(t *testing.T, h *hub, stmt string) {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(h.dir, "state", "central.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.Exec(stmt)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		t.Fatalf("%s changed nothing", stmt)
	}
}

// TestOperatorRoles: people run admin commands from elsewhere with operator
// certificates; a reviewer reviews, an operator manages nodes and grants,
// neither may do the other's work, and every action names the person.
func TestOperatorRoles(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	out := t.TempDir()
	prov := newNode(t, h, "gaj", nodeOpts{resources: fileResource("gaj.hukou", out, hukouCatalog)})
	prov.start()
	waitFor(t, 15*time.Second, "the catalog entry", func() bool { return strings.Contains(h.central("catalog", "list"), "pending") })
	dir := t.TempDir()
	alice, bob := filepath.Join(dir, "alice"), filepath.Join(dir, "bob")
	h.central("operator", "add", "alice", "--role", "reviewer", "--out", alice)
	h.central("operator", "add", "bob", "--role", "operator", "--out", bob)
	expectFail(t, "qz-central", []string{"operator", "add", "eve", "--role", "admin", "--out", filepath.Join(dir, "eve"), "--config", h.cfg}, "use operator")
	as := func(who string, args ...string) []string {
		return append([]string{"--remote", h.addr, "--operator", who}, args...)
	}

	if s := mustRun(t, "qz-central", as(alice, "catalog", "approve", "gaj.hukou", "--version", "1")...); !strings.Contains(s, "approved") {
		t.Fatalf("the reviewer's approval: %s", s)
	}
	expectFail(t, "qz-central", as(alice, "node", "add", "x", "--name", "某局"), "role reviewer may not run", "ask a hub operator")
	expectFail(t, "qz-central", as(bob, "catalog", "reject", "gaj.hukou", "--version", "1", "--reason", "x"), "role operator may not run", "ask a hub reviewer")
	if s := mustRun(t, "qz-central", as(bob, "node", "list")...); !strings.Contains(s, "gaj") {
		t.Fatalf("the operator's node list: %s", s)
	}
	expectFail(t, "qz-central", as(bob, "init"), "runs on the hub host")
	audit := h.central("audit", "list")
	for _, want := range []string{"operator:alice  catalog.approve", "operator:alice  admin.refuse", "operator:bob    admin.refuse", "operator.add"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log lacks %q:\n%s", want, audit)
		}
	}
	h.central("operator", "revoke", "alice")
	expectFail(t, "qz-central", as(alice, "catalog", "list"), "that operator alice is not revoked")
	expectFail(t, "qz-central", as(bob, "operator", "revoke", "alice"), "the hub host's administrator")
	// A node's certificate is no operator's: the hub refuses it.
	nodeAsOperator := filepath.Join(dir, "node")
	os.Mkdir(nodeAsOperator, 0o700)
	for from, to := range map[string]string{"node.key": "operator.key", "node.crt": "operator.crt", "ca.crt": "ca.crt"} {
		b, err := os.ReadFile(filepath.Join(prov.state, "identity", from))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(nodeAsOperator, to), b, 0o600)
	}
	expectFail(t, "qz-central", as(nodeAsOperator, "node", "list"), "an operator certificate is required")
	expectFail(t, "qz-central", []string{"operator", "add", "bob", "--role", "reviewer", "--out", filepath.Join(dir, "bob2"), "--config", h.cfg}, "already", "--replace")
}

// TestExpiryWithDestruction: a grant that says so is destroyed at the
// consumer when its term ends, not only when it is revoked.
func TestExpiryWithDestruction(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	out, in := t.TempDir(), t.TempDir()
	sums := writeFiles(t, out, []fileSpec{{"a.csv", 1000}, {"b/c.csv", 2000}})
	prov := newNode(t, h, "gaj", nodeOpts{resources: fileResource("gaj.files", out, "")})
	cons := newNode(t, h, "mzj", nodeOpts{subs: fileSub("gaj.files", in)})
	prov.start()
	cons.start()
	waitFor(t, 15*time.Second, "the resource", func() bool {
		_, _, err := run("qz-central", "grant", "add", "--resource", "gaj.files", "--consumer", "mzj", "--expires", "6s", "--destroy", "--config", h.cfg)
		return err == nil
	})
	waitArrived(t, in, sums, 20*time.Second)
	waitFor(t, 30*time.Second, "the destruction receipt after expiry", func() bool {
		return strings.Contains(h.central("grant", "list"), "(signed receipt)")
	})
	for rel := range sums {
		if _, err := os.Stat(filepath.Join(in, rel)); err == nil {
			t.Errorf("%s survived the grant's end", rel)
		}
	}
}
