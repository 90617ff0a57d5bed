package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps guards the split between the binaries: the agent never links
// hub code, and the hub never links agent code.
func TestDeps(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not on PATH")
	}
	cases := map[string]string{
		"github.com/qianzhi/qianzhi/agent/cmd/qz-agent":     "github.com/qianzhi/qianzhi/central",
		"github.com/qianzhi/qianzhi/central/cmd/qz-central": "github.com/qianzhi/qianzhi/agent",
	}
	for pkg, banned := range cases {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
