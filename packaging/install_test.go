package packaging_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/packaging/testroot"
)

// newRoot is a fresh Debian root for an install test, skipped under -short.
func newRoot(t *testing.T) *testroot.Root {
	t.Helper()
	if testing.Short() {
		t.Skip("installs the packages into a debootstrapped Debian root (a minute the first time): not with -short")
	}
	return testroot.New(t)
}

// TestInstallDeb installs the .deb files with dpkg into a fresh Debian as
// an administrator would, runs the binaries there, upgrades to a later
// version over an edited config, and purges qz-agent.
func TestInstallDeb(t *testing.T) {
	b := packages(t)
	r := newRoot(t)
	var debs []string
	for _, p := range products {
		debs = append(debs, r.CopyIn(t, b.deb[p.name], "/tmp/"+filepath.Base(b.deb[p.name])))
	}
	r.Run(t, "dpkg", append([]string{"--install"}, debs...)...)
	installed := func(name string) string { return r.Run(t, "dpkg-query", "--showformat=${Version}", "--show", name) }
	checkInstalled(t, r, b.version, installed)

	// The hub's first step in docs/operations.md, before the service ever
	// started: sudo -u qianzhi qz-central init writes the state folder.
	r.Run(t, "setpriv", "--reuid=qianzhi", "--regid=qianzhi", "--init-groups", "qz-central", "init", "--config", products[1].config)
	if got := strings.TrimSpace(r.Run(t, "stat", "--format=%U:%G", products[1].stateDir+"/ca.key")); got != "qianzhi:qianzhi" {
		t.Errorf("qz-central init as qianzhi wrote ca.key as %s", got)
	}

	// An administrator's edit, then an upgrade whose packaged configs
	// changed too: dpkg keeps the edit (--force-confold answers its question
	// without a terminal) and puts the new file beside it.
	u := upgradePackages(t)
	edit(t, r)
	debs = debs[:0]
	for _, p := range products {
		debs = append(debs, r.CopyIn(t, u.deb[p.name], "/tmp/"+filepath.Base(u.deb[p.name])))
	}
	r.Run(t, "dpkg", append([]string{"--force-confold", "--force-confdef", "--install"}, debs...)...)
	checkInstalled(t, r, upgradeVersion, installed)
	checkEdited(t, r, ".dpkg-dist")

	// Purging qz-agent deletes its config but keeps the user and the state
	// folder (qz-central still uses them, and the state is the node's).
	if err := os.WriteFile(r.Path(products[0].stateDir+"/agent.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r.Run(t, "dpkg", "--purge", products[0].name)
	for _, gone := range []string{products[0].binary(), products[0].config, products[0].config + ".dpkg-dist", "/usr/lib/systemd/system/" + products[0].unit()} {
		if _, err := os.Lstat(r.Path(gone)); !os.IsNotExist(err) {
			t.Errorf("after dpkg --purge %s: %s is still there (%v)", products[0].name, gone, err)
		}
	}
	r.Run(t, "getent", "passwd", "qianzhi")
	if _, err := os.Stat(r.Path(products[0].stateDir + "/agent.db")); err != nil {
		t.Errorf("dpkg --purge removed the state: %v", err)
	}
}

// TestInstallRPM installs the .rpm files with rpm --root into a fresh
// Debian, so their scriptlets run there with rpm's arguments: the same
// checks as the .deb, then an upgrade and an erase. The Debian root holds
// no rpm database of what it has, so dependencies are not checked.
func TestInstallRPM(t *testing.T) {
	testroot.Need(t, "rpm")
	b := packages(t)
	r := newRoot(t)
	// Debian's rpm keeps its database in ~/.rpmdb: the root gets its own.
	rpm := func(args ...string) string {
		t.Helper()
		return run(t, "rpm", append([]string{"--root", r.Dir, "--dbpath", "/var/lib/rpm"}, args...)...)
	}
	installed := func(name string) string { return rpm("--query", "--queryformat", "%{VERSION}", name) }
	var rpms, upgrades []string
	u := upgradePackages(t)
	for _, p := range products {
		rpms = append(rpms, b.rpm[p.name])
		upgrades = append(upgrades, u.rpm[p.name])
	}
	rpm(append([]string{"--install", "--nodeps"}, rpms...)...)
	checkInstalled(t, r, b.version, installed)

	edit(t, r)
	rpm(append([]string{"--upgrade", "--nodeps"}, upgrades...)...)
	checkInstalled(t, r, upgradeVersion, installed)
	checkEdited(t, r, ".rpmnew")

	rpm("--erase", "--nodeps", products[0].name)
	if _, err := os.Stat(r.Path(products[0].binary())); !os.IsNotExist(err) {
		t.Errorf("after rpm --erase %s: %s is still there (%v)", products[0].name, products[0].binary(), err)
	}
	if _, err := os.Stat(r.Path(products[0].config + ".rpmsave")); err != nil {
		t.Errorf("rpm --erase did not keep the edited config as .rpmsave: %v", err)
	}
	r.Run(t, "getent", "passwd", "qianzhi")
}

// checkInstalled checks both products as installed in the root: the
// system user, the files' owners and modes, the binaries running their
// version and their packaged config's check (as the service user, who must
// be able to read it), the package's version as installed reports it, and
// no service enabled.
func checkInstalled(t *testing.T, r *testroot.Root, version string, installed func(name string) string) {
	t.Helper()
	// qianzhi:x:999:999:Qianzhi data exchange:/var/lib/qianzhi:/usr/sbin/nologin
	pw := strings.Split(strings.TrimSpace(r.Run(t, "getent", "passwd", "qianzhi")), ":")
	if len(pw) != 7 {
		t.Fatalf("getent passwd qianzhi: %q", pw)
	}
	if uid, _ := strconv.Atoi(pw[2]); uid == 0 || uid >= 1000 {
		t.Errorf("qianzhi has uid %s, want a system user's (1-999)", pw[2])
	}
	if pw[5] != "/var/lib/qianzhi" || pw[6] != "/usr/sbin/nologin" {
		t.Errorf("qianzhi's home and shell %s %s, want /var/lib/qianzhi /usr/sbin/nologin", pw[5], pw[6])
	}
	if gr := strings.Split(r.Run(t, "getent", "group", "qianzhi"), ":"); gr[2] != pw[3] {
		t.Errorf("qianzhi's primary group is %s, the qianzhi group %s", pw[3], gr[2])
	}

	for _, p := range products {
		for path, want := range map[string]string{
			p.config:                              "root:qianzhi 640",
			p.binary():                            "root:root 755",
			"/usr/lib/systemd/system/" + p.unit(): "root:root 644",
			"/etc/qianzhi":                        "root:root 755",
			// The service user writes its state before the first start too.
			p.stateDir:         "qianzhi:qianzhi 750",
			"/var/lib/qianzhi": "root:root 755",
		} {
			if got := strings.TrimSpace(r.Run(t, "stat", "--format=%U:%G %a", path)); got != want {
				t.Errorf("%s is %s, want %s", path, got, want)
			}
		}
		if out := r.Run(t, p.name, "version"); !strings.HasPrefix(out, p.name+" ") {
			t.Errorf("%s version: %q", p.name, out)
		}
		out := r.Run(t, "setpriv", "--reuid=qianzhi", "--regid=qianzhi", "--init-groups", p.name, "config", "check", "--config", p.config)
		if !strings.HasPrefix(out, p.config+": OK") {
			t.Errorf("%s config check as qianzhi: %q", p.name, out)
		}
		if got := installed(p.name); got != version {
			t.Errorf("%s: version %q installed, want %q", p.name, got, version)
		}
	}

	// No install script enabled a service: no link to a qz- unit anywhere
	// under /etc/systemd (multi-user.target.wants and the like).
	filepath.WalkDir(r.Path("/etc/systemd"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), "qz-") {
			t.Errorf("%s: a qz- service was enabled by installing", strings.TrimPrefix(path, r.Dir))
		}
		return nil
	})
}

// editedLogLevel is the administrator's edit of each config.
const editedLogLevel = "log_level: debug"

// edit changes each installed config as an administrator would.
func edit(t *testing.T, r *testroot.Root) {
	t.Helper()
	for _, p := range products {
		text := readFile(t, r.Path(p.config))
		if strings.Count(text, "\nlog_level: info\n") != 1 {
			t.Fatalf("%s has no line log_level: info to edit", p.config)
		}
		if err := os.WriteFile(r.Path(p.config), []byte(strings.Replace(text, "\nlog_level: info\n", "\n"+editedLogLevel+"\n", 1)), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// checkEdited checks, after an upgrade, that each config kept its edit,
// still passes the check, and that the new packaged config was put beside
// it with the suffix.
func checkEdited(t *testing.T, r *testroot.Root, suffix string) {
	t.Helper()
	for _, p := range products {
		if text := readFile(t, r.Path(p.config)); !strings.Contains(text, "\n"+editedLogLevel+"\n") {
			t.Errorf("the upgrade lost the edit of %s:\n%s", p.config, text)
		}
		if got := strings.TrimSpace(r.Run(t, "stat", "--format=%U:%G %a", p.config)); got != "root:qianzhi 640" {
			t.Errorf("after the upgrade %s is %s, want root:qianzhi 640", p.config, got)
		}
		if text, err := os.ReadFile(r.Path(p.config + suffix)); err != nil {
			t.Errorf("the upgrade left no %s%s: %v", p.config, suffix, err)
		} else if !strings.Contains(string(text), "# changed in "+upgradeVersion) {
			t.Errorf("%s%s is not the new version's config:\n%s", p.config, suffix, text)
		}
		r.Run(t, p.name, "config", "check", "--config", p.config)
	}
}
