// Package testroot gives tests a throwaway Debian system to install
// Qianzhi's packages into and run them in, as an administrator would on a
// fresh server: debootstrap builds a minimal Debian once per machine (kept
// in the user's cache folder), and each test works in its own copy of it
// through chroot.
//
// A root needs root privileges, debootstrap and chroot. Without them the
// test is skipped with the reason, or fails when QZ_REQUIRE_TOOLS=1 (as
// make test sets it after installing the tools with make testdeps).
package testroot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Suite is the Debian release of the roots: the one Qianzhi's servers run.
const Suite = "bookworm"

// maxAge is how long a cached base root is used before it is built again
// with the mirror's current packages.
const maxAge = 7 * 24 * time.Hour

// PATH inside the root, as a root shell has it.
const rootPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Root is a throwaway Debian system in a folder of the host.
type Root struct {
	// Dir is the root's folder on the host.
	Dir string
}

// New returns a fresh minimal Debian (debootstrap --variant=minbase) in a
// folder of its own, removed when the test ends. The first call on a
// machine runs debootstrap, about a minute; later calls copy the cached
// result, a second or two.
func New(t testing.TB) *Root {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a throwaway Debian root needs root (debootstrap, chroot)")
	}
	tools := Need(t, "debootstrap", "chroot", "cp")
	base := cachedBase(t, tools[0])
	dir := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command(tools[2], "-a", base, dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the base root: %v\n%s", err, out)
	}
	return &Root{Dir: dir}
}

// Path is where a path inside the root is on the host.
func (r *Root) Path(p string) string { return filepath.Join(r.Dir, p) }

// Command is a command run inside the root through chroot, with the
// environment of a root shell there (PATH, HOME=/root, LC_ALL=C.UTF-8,
// DEBIAN_FRONTEND=noninteractive) and nothing of the host's, and no input.
func (r *Root) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	chroot, err := LookPath("chroot")
	if err != nil {
		chroot = "chroot"
	}
	cmd := exec.CommandContext(ctx, chroot, append([]string{r.Dir, name}, args...)...)
	cmd.Env = []string{"PATH=" + rootPATH, "HOME=/root", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"}
	return cmd
}

// Run runs a command inside the root and returns its output, stdout and
// stderr together; the test fails when the command fails.
func (r *Root) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := r.Command(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("in the root: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Sh runs a script with sh -eu inside the root, as Run does.
func (r *Root) Sh(t testing.TB, script string) string {
	t.Helper()
	return r.Run(t, "/bin/sh", "-euc", script)
}

// CopyIn copies a host file into the root, at the absolute path dst there,
// and returns dst.
func (r *Root) CopyIn(t testing.TB, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(r.Path(dst)), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(r.Path(dst), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// Need returns the paths of the commands, found on PATH or in /usr/sbin
// and /sbin (debootstrap is there and PATH may lack them). A missing one
// skips the test with the reason, or fails it when QZ_REQUIRE_TOOLS=1.
func Need(t testing.TB, names ...string) []string {
	t.Helper()
	var paths, missing []string
	for _, n := range names {
		p, err := LookPath(n)
		if err != nil {
			missing = append(missing, n)
		}
		paths = append(paths, p)
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("missing %s: make testdeps installs it", strings.Join(missing, ", "))
		if os.Getenv("QZ_REQUIRE_TOOLS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return paths
}

// LookPath finds a command on PATH, then in /usr/sbin and /sbin.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// cachedBase returns the folder of the machine's base root, building it
// first when it is missing or older than maxAge. A lock keeps test binaries
// running at once from building it twice.
func cachedBase(t testing.TB, debootstrap string) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cache = filepath.Join(cache, "qianzhi", "testroot")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("lock %s: %v", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	name := fmt.Sprintf("%s-minbase-%s", Suite, runtime.GOARCH)
	dir := filepath.Join(cache, name)
	done := dir + ".done" // written once debootstrap has finished
	if fi, err := os.Stat(done); err == nil && time.Since(fi.ModTime()) < maxAge {
		return dir
	}
	os.Remove(done)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	mirror := Mirror()
	start := time.Now()
	cmd := exec.CommandContext(t.Context(), debootstrap, "--variant=minbase", Suite, dir, mirror)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("debootstrap --variant=minbase %s %s %s: %v\n%s", Suite, dir, mirror, err, tail(log.String(), 40))
	}
	t.Logf("built the base root %s from %s in %s", dir, mirror, time.Since(start).Round(time.Second))
	if err := os.WriteFile(done, []byte(mirror+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Mirror is the Debian mirror the roots are built from: $QZ_DEBIAN_MIRROR,
// else the machine's own apt source for Suite, else deb.debian.org.
func Mirror() string {
	if m := os.Getenv("QZ_DEBIAN_MIRROR"); m != "" {
		return m
	}
	var texts []string
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append(append(files, "/etc/apt/sources.list"), lists...) {
		if b, err := os.ReadFile(f); err == nil {
			texts = append(texts, string(b))
		}
	}
	for _, text := range texts {
		if m := mirrorIn(text, Suite); m != "" {
			return m
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorIn finds the URI of a deb source for suite in the text of an apt
// sources file, in the one-line format or the deb822 one.
func mirrorIn(text, suite string) string {
	var uris, suites, types []string
	disabled := false
	flush := func() string {
		defer func() { uris, suites, types, disabled = nil, nil, nil, false }()
		if len(uris) > 0 && !disabled && slices.Contains(suites, suite) && (types == nil || slices.Contains(types, "deb")) {
			return uris[0]
		}
		return ""
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" { // deb822: a blank line ends a source
			if m := flush(); m != "" {
				return m
			}
			continue
		}
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if f := strings.Fields(line); f[0] == "deb" {
			// deb [options] URI suite component…
			f = f[1:]
			if len(f) > 0 && strings.HasPrefix(f[0], "[") {
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) >= 2 && f[1] == suite {
				return f[0]
			}
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.ToLower(key) {
		case "uris":
			uris = strings.Fields(value)
		case "suites":
			suites = strings.Fields(value)
		case "types":
			types = strings.Fields(value)
		case "enabled":
			disabled = strings.TrimSpace(value) == "no"
		}
	}
	return flush()
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
