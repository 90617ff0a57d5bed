package testroot

import (
	"os"
	"strings"
	"testing"
)

func TestMirrorIn(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"deb822", `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`, "http://mirror.example/debian"},
		{"deb822 other suite first", `Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security

Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
`, "http://mirror.example/debian"},
		{"deb822 source only", `Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
`, ""},
		{"deb822 disabled", `Enabled: no
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
`, ""},
		{"one-line", "# deb http://old.example/debian bookworm main\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n", "http://mirror.example/debian"},
		{"one-line other suite", "deb http://mirror.example/debian bullseye main\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mirrorIn(tc.text, "bookworm"); got != tc.want {
				t.Errorf("mirrorIn = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNew(t *testing.T) {
	if testing.Short() {
		t.Skip("debootstraps a Debian root (a minute the first time): not with -short")
	}
	r := New(t)
	if v := r.Sh(t, "cat /etc/debian_version"); !strings.HasPrefix(v, "12.") {
		t.Errorf("/etc/debian_version %q, want 12.x (%s)", v, Suite)
	}
	r.CopyIn(t, "testroot.go", "/tmp/in/testroot.go")
	if out := r.Sh(t, `id -u; test -s /tmp/in/testroot.go && echo copied; echo "$PATH"`); out != "0\ncopied\n"+rootPATH+"\n" {
		t.Errorf("in the root: %q", out)
	}
	if err := r.Command(t.Context(), "/bin/sh", "-c", "exit 3").Run(); err == nil {
		t.Error("a failing command in the root reported no error")
	}
	// Each root is its own copy.
	if err := os.WriteFile(r.Path("/etc/qz-test"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(New(t).Path("/etc/qz-test")); !os.IsNotExist(err) {
		t.Errorf("a second root sees the first one's file: %v", err)
	}
}
