package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfig loads configs/agent.yaml so the example cannot rot.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("../configs/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "outbox"), 0o755)
	p := filepath.Join(root, "agent.yaml")
	os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/srv/qianzhi", root)), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if len(c.Resources) != 2 || c.Resources[1].Source == nil || len(c.Subscriptions) != 2 || c.Subscriptions[1].Sink == nil {
		t.Errorf("example decoded to %+v", c)
	}
	def := DefaultConfig()
	if c.Spool.Quota != def.Spool.Quota || c.Batch.Compression != def.Batch.Compression || c.Poll != def.Poll {
		t.Error("example config's stated defaults differ from the built-in ones")
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct{ yaml, want string }{
		"unknown kind":       {"resources:\n  - id: r\n    kind: ftp\n", `unknown connector kind "ftp"`},
		"missing id":         {"resources:\n  - kind: file\n", "id is required"},
		"missing path":       {"resources:\n  - id: r\n    kind: file\n", "path is required"},
		"relative path":      {"resources:\n  - id: r\n    kind: file\n    path: out\n", "must be absolute"},
		"bad glob":           {"resources:\n  - id: r\n    kind: file\n    path: /tmp\n    include: ['[']\n", "malformed"},
		"duplicate resource": {"resources:\n  - id: r\n    kind: file\n    path: /tmp\n  - id: r\n    kind: file\n    path: /tmp\n", "declared twice"},
		"bad transport":      {"transport: udp\n", `transport "udp"`},
		"tiny quota":         {"spool:\n  quota: 1MiB\n", "too small"},
		"bad compression":    {"batch:\n  compression: max\n", "batch.compression"},
		"sink unknown key":   {"subscriptions:\n  - id: r\n    kind: file\n    path: /tmp/in\n    delete: true\n", `cfg.yaml:6: unknown key "delete"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, "cfg.yaml")
			os.WriteFile(p, []byte("state_dir: /tmp/s\n"+c.yaml), 0o644)
			_, err := LoadConfig(p)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}
