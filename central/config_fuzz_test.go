package central

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/config"
)

// FuzzLoadConfig loads arbitrary central.yaml files, seeded with the
// documented example: LoadConfig must return without panicking, and each
// problem it reports must name the file (with its line when it is a
// *config.Error from the YAML).
func FuzzLoadConfig(f *testing.F) {
	b, err := os.ReadFile("../configs/central.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte("listen: 0.0.0.0:7443\nhosts: [hub.example.gov.cn]\ndeadlines:\n  hub_reviw: 5\n"))
	f.Add([]byte("call_rate: .inf\ncall_quota: -1\nretention: 1y\n"))
	path := filepath.Join(f.TempDir(), "central.yaml")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(path)
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
	})
}
