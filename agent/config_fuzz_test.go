package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/config"
)

// FuzzLoadConfig loads arbitrary agent.yaml files, seeded with the
// documented example: LoadConfig must return without panicking, and each
// problem it reports must name the file (with its line when it is a
// *config.Error from the YAML or a resource).
func FuzzLoadConfig(f *testing.F) {
	b, err := os.ReadFile("../configs/agent.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte("hub: hub.example.gov.cn:7443\nstate_dir: /var/lib/qianzhi/agent\nresources:\n  - id: a.b\n    kind: file\n    path: /srv/x\n    bogus: 1\n"))
	f.Add([]byte("resources:\n  - id: gaj.hukou\n    kind: sqlite\n    path: /srv/x.db\n    table: people\n    calls: [{name: by_id, params: [{name: id_no, type: citizen_id}], fields: [name], query: \"SELECT name FROM people WHERE id_no = :id_no AND x = ?\"}]\n"))
	f.Add([]byte("spool:\n  quota: 99999999999TiB\n"))
	path := filepath.Join(f.TempDir(), "agent.yaml")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(path)
		checkConfigErrors(t, path, err)
	})
}

// checkConfigErrors fails t unless every problem joined in err names path.
func checkConfigErrors(t *testing.T, path string, err error) {
	t.Helper()
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if !strings.HasPrefix(e.Error(), path+":") {
			t.Fatalf("problem %q does not name the file", e)
		}
		var ce *config.Error
		if errors.As(e, &ce) && ce.File != path {
			t.Fatalf("problem %q names file %q", e, ce.File)
		}
	}
	if err != nil {
		walk(err)
	}
}
