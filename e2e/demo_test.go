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
	for _, want := range []string{"large.bin", "报表/2026/第一季度人口统计.csv", "nested/deeper/numbers.txt", "audit log intact"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, " NO ") {
		t.Errorf("demo reports a hash mismatch:\n%s", s)
	}
}
