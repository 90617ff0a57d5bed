package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDemo runs the script behind 'make demo' with the binaries under
// test, so the quickstart in the README cannot break unnoticed.
func TestDemo(t *testing.T) {
	cmd := exec.Command("bash", "../scripts/demo.sh")
	cmd.Env = append(os.Environ(), "QZ_BIN="+binDir, "DEMO_KEEP=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"large.bin", "报表/2026/第一季度人口统计.csv", "nested/deeper/numbers.txt", "audit log intact",
		"consumer      10080", "reconciliation of demo.people requested"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
	// After the reconciliation both sides print the same rows and sum.
	var last = map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) == 3 && (f[0] == "provider" || f[0] == "consumer") {
			last[f[0]] = f[1] + " " + f[2]
		}
	}
	if last["provider"] != last["consumer"] || !strings.HasPrefix(last["consumer"], "10075 ") {
		t.Errorf("the tables do not end equal at 10,075 rows: %v\n%s", last, s)
	}
	if strings.Contains(s, " NO ") {
		t.Errorf("demo reports a hash mismatch:\n%s", s)
	}
}

// TestGovernanceWalkthrough runs scripts/governance.sh, the request that
// docs/governance.md walks through, so the guide's commands keep working.
func TestGovernanceWalkthrough(t *testing.T) {
	cmd := exec.Command("bash", "../scripts/governance.sh")
	cmd.Env = append(os.Environ(), "QZ_BIN="+binDir, "DEMO_KEEP=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough failed: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"pending", "mzj.dibao version 1: approved", "最低生活保障对象信息", "hub_review",
		"passed to the provider mzj", "provider: decide", "g-", "张**", "北京市海淀区", "已核实并更正", "0 overdue", "audit log intact", "(signed receipt)", "grant.destroy", "department report as of", "市民政局", `role reviewer may not run "grant revoke"`} {
		if !strings.Contains(s, want) {
			t.Errorf("walkthrough output lacks %q", want)
		}
	}
	show := s[strings.Index(s, "show $DIR/db/rsj.db"):]
	for _, secret := range []string{"110101199003078515", "张三丰", "中关村南大街", "1200.00", "月收入"} {
		if strings.Contains(show[:strings.Index(show, "==> 7.")], secret) {
			t.Errorf("the consumer's table shows %q", secret)
		}
	}
}
