package packaging_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/qianzhi/qianzhi/packaging/testroot"
)

// repo is the repository's root, seen from this package's folder.
const repo = ".."

// upgradeVersion is the version of the second build, above any the
// Makefile derives for a while.
const upgradeVersion = "99.0.0"

// validVersion is a version that dpkg and rpm both accept and order alike:
// no hyphen (rpm refuses it, dpkg reads it as a Debian revision).
var validVersion = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

// build is one set of packages: a file per product and format.
type build struct {
	version string
	bin     string            // the binaries packaged
	deb     map[string]string // product name → .deb
	rpm     map[string]string // product name → .rpm
}

var (
	tmpDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "qz-packaging-") })

	// released is make package as a developer runs it: the version from git.
	released = sync.OnceValues(func() (*build, error) {
		dir, err := tmpDir()
		if err != nil {
			return nil, err
		}
		return makePackage(filepath.Join(dir, "bin"), filepath.Join(dir, "dist"))
	})

	// upgrade is the same binaries packaged as a later version whose
	// packaged configs changed (one more comment line), so an upgrade
	// meets both the administrator's edit and the distributor's.
	upgrade = sync.OnceValues(func() (*build, error) {
		first, err := released()
		if err != nil {
			return nil, err
		}
		dir, err := tmpDir()
		if err != nil {
			return nil, err
		}
		return nfpmUpgrade(first.bin, filepath.Join(dir, "upgrade"))
	})
)

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := tmpDir(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// packages returns the packages make package builds, building them once
// for all tests.
func packages(t *testing.T) *build {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the packages with make package (several seconds): not with -short")
	}
	testroot.Need(t, "make", "git")
	b, err := released()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func upgradePackages(t *testing.T) *build {
	t.Helper()
	packages(t)
	b, err := upgrade()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// makePackage runs make package with its binaries and packages in the
// given folders, and finds what it wrote.
func makePackage(bin, dist string) (*build, error) {
	cmd := exec.Command("make", "-C", repo, "--no-print-directory", "package", "BIN="+bin, "DIST="+dist)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("make package: %v\n%s", err, out)
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		return nil, err
	}
	b := &build{bin: filepath.Join(bin, "linux_amd64"), deb: map[string]string{}, rpm: map[string]string{}}
	names := regexp.MustCompile(`^(qz-[a-z]+)(?:_(.+)_amd64\.deb|-(.+)\.x86_64\.rpm)$`)
	for _, e := range entries {
		m := names.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("make package wrote %s, which is not NAME_VERSION_amd64.deb or NAME-VERSION.x86_64.rpm", e.Name())
		}
		v, files := m[2], b.deb
		if m[3] != "" {
			v, files = m[3], b.rpm
		}
		if b.version == "" {
			b.version = v
		}
		if v != b.version {
			return nil, fmt.Errorf("make package wrote versions %s and %s", b.version, v)
		}
		files[m[1]] = filepath.Join(dist, e.Name())
	}
	for _, p := range products {
		if b.deb[p.name] == "" || b.rpm[p.name] == "" {
			return nil, fmt.Errorf("make package wrote no .deb or no .rpm of %s: %v", p.name, entries)
		}
	}
	if !validVersion.MatchString(b.version) {
		return nil, fmt.Errorf("make package's version %q is not one dpkg and rpm both accept (%s)", b.version, validVersion)
	}
	return b, nil
}

// nfpmUpgrade runs nfpm as make package does, on the same binaries, with
// upgradeVersion and a packaged config that differs from the first build's.
func nfpmUpgrade(bin, dir string) (*build, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b := &build{version: upgradeVersion, bin: bin, deb: map[string]string{}, rpm: map[string]string{}}
	for _, p := range products {
		conf := filepath.Base(p.config)
		src, err := os.ReadFile(filepath.Join("etc", conf))
		if err != nil {
			return nil, err
		}
		newConf := filepath.Join(dir, conf)
		if err := os.WriteFile(newConf, append(src, "# changed in "+upgradeVersion+"\n"...), 0o644); err != nil {
			return nil, err
		}
		def, err := os.ReadFile(filepath.Join("nfpm", p.name+".yaml"))
		if err != nil {
			return nil, err
		}
		from := "src: packaging/etc/" + conf + "\n"
		if strings.Count(string(def), from) != 1 {
			return nil, fmt.Errorf("nfpm/%s.yaml: no line %q to point at the changed config", p.name, from)
		}
		yaml := filepath.Join(dir, p.name+".yaml")
		if err := os.WriteFile(yaml, []byte(strings.Replace(string(def), from, "src: "+newConf+"\n", 1)), 0o644); err != nil {
			return nil, err
		}
		b.deb[p.name] = filepath.Join(dir, p.name+"_"+upgradeVersion+"_amd64.deb")
		b.rpm[p.name] = filepath.Join(dir, p.name+"-"+upgradeVersion+".x86_64.rpm")
		for packager, target := range map[string]string{"deb": b.deb[p.name], "rpm": b.rpm[p.name]} {
			cmd := exec.Command("go", "tool", "nfpm", "package", "--config", yaml, "--packager", packager, "--target", target)
			cmd.Dir = repo
			cmd.Env = append(os.Environ(), "QZ_VERSION="+upgradeVersion, "QZ_ARCH=amd64", "QZ_BIN="+bin)
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("nfpm %s: %v\n%s", packager, err, out)
			}
		}
	}
	return b, nil
}

// run runs a host command and returns its stdout; it fails the test with
// stderr when the command fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// entry is a file in a package as the package lists it.
type entry struct {
	mode  string // as ls -l shows it: -rw-r-----
	owner string // user/group
}

// wantFiles are the files (not folders) a product's package holds: nothing
// else.
func wantFiles(p product) map[string]entry {
	return map[string]entry{
		p.binary():                            {"-rwxr-xr-x", "root/root"},
		"/usr/lib/systemd/system/" + p.unit(): {"-rw-r--r--", "root/root"},
		p.config:                              {"-rw-r-----", "root/qianzhi"},
		p.example():                           {"-rw-r--r--", "root/root"},
	}
}

// TestDeb reads the .deb files back with dpkg-deb: their control fields,
// files with modes and owners, conffiles, scripts, and the unit and config
// they unpack.
func TestDeb(t *testing.T) {
	testroot.Need(t, "dpkg-deb")
	b := packages(t)
	for _, p := range products {
		t.Run(p.name, func(t *testing.T) {
			deb := b.deb[p.name]
			fields := run(t, "dpkg-deb", "--showformat=${Package}|${Version}|${Architecture}|${Pre-Depends}\n", "--show", deb)
			if want := fmt.Sprintf("%s|%s|amd64|passwd\n", p.name, b.version); fields != want {
				t.Errorf("control fields (Package|Version|Architecture|Pre-Depends) %q, want %q", fields, want)
			}
			info := run(t, "dpkg-deb", "--info", deb)
			for _, s := range []string{"conffiles", "preinst", "postinst", "prerm", "postrm"} {
				if !regexp.MustCompile(`\d+ lines\s+(\*\s+)?` + s + `\s`).MatchString(info) {
					t.Errorf("dpkg-deb --info lists no %s:\n%s", s, info)
				}
			}

			// dpkg-deb -c: drwxr-xr-x root/root 0 2026-01-01 00:00 ./etc/qianzhi/
			files := map[string]entry{}
			for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "--contents", deb)), "\n") {
				f := strings.Fields(line)
				if len(f) != 6 {
					t.Fatalf("dpkg-deb --contents: unexpected line %q", line)
				}
				if f[0][0] != 'd' {
					files[strings.TrimPrefix(f[5], ".")] = entry{f[0], f[1]}
				}
			}
			if want := wantFiles(p); !maps.Equal(files, want) {
				t.Errorf("files in the .deb:\n  %v\nwant\n  %v", files, want)
			}

			ctrl := untar(t, "dpkg-deb", "--ctrl-tarfile", deb)
			if got, want := ctrl["conffiles"], p.config+"\n"; got != want {
				t.Errorf("conffiles %q, want %q", got, want)
			}
			scripts := map[string]string{preinstall: ctrl["preinst"], postinstall: ctrl["postinst"], preremove: ctrl["prerm"], postremove: ctrl["postrm"]}
			checkScripts(t, p, scripts)
			if !maps.Equal(scripts, sourceScripts(t, p)) {
				t.Error("the .deb's scripts differ from those in scripts/")
			}

			dir := t.TempDir()
			run(t, "dpkg-deb", "--extract", deb, dir)
			checkUnit(t, p, readFile(t, filepath.Join(dir, "usr/lib/systemd/system", p.unit())))
			sameFile(t, filepath.Join(dir, p.config), filepath.Join("etc", filepath.Base(p.config)))
			sameFile(t, filepath.Join(dir, p.example()), filepath.Join(repo, "configs", filepath.Base(p.config)))
			bin := filepath.Join(dir, p.binary())
			if out := run(t, bin, "version"); !strings.HasPrefix(out, p.name+" ") {
				t.Errorf("%s version: %q", p.binary(), out)
			}
			if out := run(t, bin, "config", "check", "--config", filepath.Join(dir, p.config)); !strings.Contains(out, ": OK") {
				t.Errorf("%s config check of the packaged config: %q", p.binary(), out)
			}
		})
	}
}

// TestRPM reads the .rpm files back with rpm and rpm2cpio: their header,
// files with modes, owners and config flags, requirements, scripts, and the
// unit and config in the payload.
func TestRPM(t *testing.T) {
	testroot.Need(t, "rpm", "rpm2cpio")
	b := packages(t)
	for _, p := range products {
		t.Run(p.name, func(t *testing.T) {
			rpm := b.rpm[p.name]
			if got, want := run(t, "rpm", "-qp", "--qf", "%{NAME}|%{VERSION}|%{ARCH}", rpm), p.name+"|"+b.version+"|x86_64"; got != want {
				t.Errorf("NAME|VERSION|ARCH %q, want %q", got, want)
			}
			list := strings.Fields(run(t, "rpm", "-qpl", rpm))
			wantList := append(slices.Collect(maps.Keys(wantFiles(p))), "/etc/qianzhi")
			slices.Sort(list)
			slices.Sort(wantList)
			if !slices.Equal(list, wantList) {
				t.Errorf("rpm -qpl:\n  %q\nwant\n  %q", list, wantList)
			}
			if got := strings.Fields(run(t, "rpm", "-qpc", rpm)); !slices.Equal(got, []string{p.config}) {
				t.Errorf("rpm -qpc (config files) %q, want %s", got, p.config)
			}
			files := map[string]entry{}
			flags := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(run(t, "rpm", "-qp", "--qf", "[%{FILENAMES}|%{FILEMODES:perms}|%{FILEUSERNAME}/%{FILEGROUPNAME}|%{FILEFLAGS:fflags}\n]", rpm)), "\n") {
				f := strings.Split(line, "|")
				if len(f) != 4 {
					t.Fatalf("rpm --qf: unexpected line %q", line)
				}
				if f[1][0] != 'd' {
					files[f[0]] = entry{f[1], f[2]}
				}
				flags[f[0]] = f[3]
			}
			if want := wantFiles(p); !maps.Equal(files, want) {
				t.Errorf("files in the .rpm:\n  %v\nwant\n  %v", files, want)
			}
			// c: %config, n: noreplace (an upgrade keeps local edits).
			if f := flags[p.config]; f != "cn" {
				t.Errorf("%s has file flags %q, want cn: %%config(noreplace)", p.config, f)
			}
			if req := run(t, "rpm", "-qpR", rpm); !strings.Contains(req, "/usr/sbin/useradd") {
				t.Errorf("the .rpm does not require /usr/sbin/useradd, which its %%pre runs:\n%s", req)
			}

			scripts := rpmScripts(t, run(t, "rpm", "-qp", "--scripts", rpm))
			checkScripts(t, p, scripts)
			src := sourceScripts(t, p)
			for kind, s := range scripts {
				if strings.TrimSpace(s) != strings.TrimSpace(src[kind]) {
					t.Errorf("the .rpm's %s differs from the one in scripts/:\n%s", kind, s)
				}
			}

			cmd := exec.Command("rpm2cpio", rpm)
			payload, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// rpm2cpio exits 1 on nfpm's packages although it writes the whole
			// payload: it compares the bytes written with the header's size
			// tag, which rpmpack fills with the files' total size (rpmpack
			// issue 60); rpm itself installs them. So its exit status is not
			// read: cpioFiles reads up to the archive's trailer instead.
			unitPath := "/usr/lib/systemd/system/" + p.unit()
			got, err := cpioFiles(payload, unitPath, p.config)
			io.Copy(io.Discard, payload)
			cmd.Wait()
			if err != nil {
				t.Fatalf("rpm2cpio %s: %v", rpm, err)
			}
			checkUnit(t, p, got[unitPath])
			if want := readFile(t, filepath.Join("etc", filepath.Base(p.config))); got[p.config] != want {
				t.Errorf("the .rpm's %s differs from etc/%s", p.config, filepath.Base(p.config))
			}
		})
	}
}

// TestUnitVerify runs systemd-analyze verify on the units as the .deb
// files unpack them, with the binaries in place (verify checks that
// ExecStart's program exists), and checks that it does catch a broken unit.
func TestUnitVerify(t *testing.T) {
	testroot.Need(t, "systemd-analyze", "dpkg-deb")
	b := packages(t)
	root := t.TempDir()
	for _, p := range products {
		run(t, "dpkg-deb", "--extract", b.deb[p.name], root)
	}
	// The units systemd itself ships, which ours reach through After=,
	// Wants=, WantedBy= and the default dependencies (sysinit.target …).
	units := filepath.Join(root, "usr/lib/systemd/system")
	hostUnits := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(hostUnits, "sysinit.target")); err != nil {
		hostUnits = "/lib/systemd/system"
	}
	entries, err := os.ReadDir(hostUnits)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "qz-") {
			continue
		}
		if out, err := exec.Command("cp", "-a", filepath.Join(hostUnits, e.Name()), units).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
	}
	// ExecReload's program, as on Debian and RHEL alike (/bin is /usr/bin).
	kill, err := exec.LookPath("kill")
	if err != nil {
		t.Fatalf("no kill program to stand for /bin/kill: %v", err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", kill, filepath.Join(root, "usr/bin/kill")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	// verify prints every problem it finds, yet exits 0 for many (an
	// unknown key, a value it cannot parse): a clean unit prints nothing.
	verify := func(unit string) (string, error) {
		out, err := exec.Command("systemd-analyze", "--man=no", "--root="+root, "verify", unit).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	for _, p := range products {
		if out, err := verify(p.unit()); err != nil || out != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", p.unit(), err, out)
		}
	}

	good := readFile(t, filepath.Join(units, products[0].unit()))
	for name, c := range map[string]struct{ from, to, want string }{
		"a misspelt key":      {"Restart=on-failure", "Restrat=on-failure", "Unknown key"},
		"a bad value":         {"WatchdogSec=30s", "WatchdogSec=half a minute", "Failed to parse"},
		"a missing program":   {"ExecStart=/usr/bin/qz-agent run", "ExecStart=/usr/bin/qz-agentx run", "not executable"},
		"an unknown Type":     {"Type=notify", "Type=notified", "Failed to parse"},
		"a bad ReadWritePath": {"ReadWritePaths=/var/lib/qianzhi/agent", "ReadWritePaths=var/lib/qianzhi/agent", "not absolute"},
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(good, c.from) {
				t.Fatalf("the unit has no line %q to break", c.from)
			}
			name := "qz-broken-" + strings.ReplaceAll(name, " ", "-") + ".service"
			if err := os.WriteFile(filepath.Join(units, name), []byte(strings.Replace(good, c.from, c.to, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, _ := verify(name)
			if !strings.Contains(out, c.want) {
				t.Errorf("systemd-analyze verify of a unit with %s said %q; want %q", c.to, out, c.want)
			}
		})
	}
}

// untar reads the tar archive a command writes and returns its regular
// files by name (./ left out).
func untar(t *testing.T, name string, args ...string) map[string]string {
	t.Helper()
	tr := tar.NewReader(strings.NewReader(run(t, name, args...)))
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	}
}

// rpmScripts splits rpm --scripts output into the scripts, by nfpm's names.
func rpmScripts(t *testing.T, out string) map[string]string {
	t.Helper()
	names := map[string]string{"preinstall": preinstall, "postinstall": postinstall, "preuninstall": preremove, "postuninstall": postremove}
	header := regexp.MustCompile(`(?m)^(\w+) scriptlet \(using /bin/sh\):\n`)
	idx := header.FindAllStringSubmatchIndex(out, -1)
	scripts := map[string]string{}
	for i, m := range idx {
		end := len(out)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		kind, ok := names[out[m[2]:m[3]]]
		if !ok {
			t.Errorf("rpm --scripts: unexpected %s scriptlet", out[m[2]:m[3]])
			continue
		}
		scripts[kind] = out[m[1]:end]
	}
	return scripts
}

// cpioFiles reads a cpio archive in the "new ASCII" format rpm2cpio writes
// and returns the wanted files' contents, by absolute path.
func cpioFiles(r io.Reader, want ...string) (map[string]string, error) {
	br := bufio.NewReader(r)
	files := map[string]string{}
	skip := func(n int64) error { _, err := io.CopyN(io.Discard, br, n); return err }
	for {
		var h [110]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return nil, fmt.Errorf("cpio header: %w", err)
		}
		if magic := string(h[:6]); magic != "070701" && magic != "070702" {
			return nil, fmt.Errorf("cpio: magic %q, want 070701", magic)
		}
		field := func(i int) int64 {
			v, _ := strconv.ParseInt(string(h[6+8*i:14+8*i]), 16, 64)
			return v
		}
		size, nameSize := field(6), field(11)
		name := make([]byte, nameSize)
		if _, err := io.ReadFull(br, name); err != nil {
			return nil, err
		}
		if err := skip((4 - (110+nameSize)%4) % 4); err != nil {
			return nil, err
		}
		path := strings.TrimRight(string(name), "\x00") // ./usr/bin/x or /usr/bin/x
		if path == "TRAILER!!!" {
			break
		}
		path = "/" + strings.TrimLeft(strings.TrimPrefix(path, "."), "/")
		if slices.Contains(want, path) {
			b := make([]byte, size)
			if _, err := io.ReadFull(br, b); err != nil {
				return nil, err
			}
			files[path] = string(b)
		} else if err := skip(size); err != nil {
			return nil, err
		}
		if err := skip((4 - size%4) % 4); err != nil {
			return nil, err
		}
	}
	var missing []error
	for _, w := range want {
		if _, ok := files[w]; !ok {
			missing = append(missing, fmt.Errorf("cpio: no %s", w))
		}
	}
	return files, errors.Join(missing...)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sameFile checks that a file unpacked from a package is the source file.
func sameFile(t *testing.T, unpacked, source string) {
	t.Helper()
	if readFile(t, unpacked) != readFile(t, source) {
		t.Errorf("%s differs from %s", unpacked, source)
	}
}
