package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The install scripts of a package, by nfpm's names for them.
const (
	preinstall  = "preinstall"  // deb preinst, rpm %pre
	postinstall = "postinstall" // deb postinst, rpm %post
	preremove   = "preremove"   // deb prerm, rpm %preun
	postremove  = "postremove"  // deb postrm, rpm %postun
)

// sourceScripts reads a product's install scripts from scripts/.
func sourceScripts(t *testing.T, p product) map[string]string {
	t.Helper()
	files := map[string]string{
		preinstall:  "preinstall.sh",
		postinstall: p.name + ".postinstall.sh",
		preremove:   p.name + ".preremove.sh",
		postremove:  "postremove.sh",
	}
	scripts := map[string]string{}
	for kind, f := range files {
		b, err := os.ReadFile(filepath.Join("scripts", f))
		if err != nil {
			t.Fatal(err)
		}
		scripts[kind] = string(b)
	}
	return scripts
}

// What could enable or start a service, in a script's code (comments left
// out): the words enable and start, and the other tools that start services.
var starts = regexp.MustCompile(`\b(enable|start)\b|--now\b|deb-systemd-invoke|invoke-rc\.d|(?m:^\s*service\s)`)

// systemctlCall finds systemctl's command in a call; only the allowed ones
// may appear in an install script (try-restart restarts a running service
// only; status is named in a message).
var (
	systemctlCall    = regexp.MustCompile(`\bsystemctl((?:\s+-[-\w=]+)*)\s+([\w-]+)`)
	systemctlAllowed = []string{"daemon-reload", "try-restart", "stop", "disable", "status"}
)

// code is a script without its comments, continued lines joined.
func code(script string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.ReplaceAll(script, "\\\n", " "), "\n") {
		if i := strings.Index(line, "#"); i >= 0 && !strings.HasPrefix(line, "#!") {
			line = line[:i]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// checkScripts checks what the install scripts must do, read as text: the
// same checks run on this folder's scripts and on those in the packages.
func checkScripts(t *testing.T, p product, scripts map[string]string) {
	t.Helper()
	for _, kind := range []string{preinstall, postinstall, preremove, postremove} {
		s, ok := scripts[kind]
		if !ok {
			t.Errorf("%s: no %s script", p.name, kind)
			continue
		}
		if !strings.HasPrefix(s, "#!/bin/sh\n") {
			t.Errorf("%s %s: does not start with #!/bin/sh", p.name, kind)
		}
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s %s: sh -n: %v\n%s", p.name, kind, err, out)
		}
		c := code(s)
		if m := starts.FindString(c); m != "" {
			t.Errorf("%s %s: %q: no install script may enable or start a service:\n%s", p.name, kind, m, s)
		}
		for _, m := range systemctlCall.FindAllStringSubmatch(c, -1) {
			if !slices.Contains(systemctlAllowed, m[2]) {
				t.Errorf("%s %s: %q: an install script may only run systemctl %s", p.name, kind, m[0], strings.Join(systemctlAllowed, ", "))
			}
		}
	}
	useradd := regexp.MustCompile(`(?m)^\s*useradd\s.*$`).FindString(code(scripts[preinstall]))
	var missing []string
	for _, arg := range []string{"--system", "--home-dir /var/lib/qianzhi", "--no-create-home", "--shell /usr/sbin/nologin"} {
		if !strings.Contains(useradd, arg) {
			missing = append(missing, arg)
		}
	}
	if len(missing) > 0 || !strings.HasSuffix(strings.TrimSpace(useradd), " qianzhi") {
		t.Errorf("%s preinstall: want useradd %s … qianzhi, have %q in:\n%s", p.name, strings.Join(missing, " "), useradd, scripts[preinstall])
	}
	if !strings.Contains(scripts[postinstall], "try-restart "+`"$unit"`) || !strings.Contains(scripts[postinstall], "unit="+p.unit()) {
		t.Errorf("%s postinstall: does not try-restart %s", p.name, p.unit())
	}
}

// TestScripts runs the install scripts on this machine with systemctl,
// getent and useradd replaced by stand-ins that record their arguments, for
// every way dpkg and rpm call them, with and without systemd running the
// machine.
func TestScripts(t *testing.T) {
	for _, p := range products {
		t.Run(p.name, func(t *testing.T) { checkScripts(t, p, sourceScripts(t, p)) })
	}

	type call struct {
		script string
		args   []string
		booted bool     // systemd runs the machine (/run/systemd/system exists)
		have   []string // what getent finds: "passwd", "group"; "state": the state folder exists
		want   []string // the commands run, in order
	}
	u, state := "UNIT", "STATE"
	mkState := []string{"install -d -m 0755 /var/lib/qianzhi", "install -d -o qianzhi -g qianzhi -m 0750 " + state}
	useradd := "useradd --system %s --home-dir /var/lib/qianzhi --no-create-home --shell /usr/sbin/nologin --comment Qianzhi data exchange qianzhi"
	for name, c := range map[string]call{
		// Before unpacking: the user, and its group, exactly once.
		"deb preinst install":         {script: preinstall, args: []string{"install"}, want: []string{strings.Replace(useradd, "%s", "--user-group", 1)}},
		"rpm pre 1":                   {script: preinstall, args: []string{"1"}, want: []string{strings.Replace(useradd, "%s", "--user-group", 1)}},
		"deb preinst, group left":     {script: preinstall, args: []string{"install"}, have: []string{"group"}, want: []string{strings.Replace(useradd, "%s", "--gid qianzhi", 1)}},
		"deb preinst upgrade":         {script: preinstall, args: []string{"upgrade", "1.0"}, have: []string{"passwd", "group"}},
		"rpm pre 2, user exists":      {script: preinstall, args: []string{"2"}, have: []string{"passwd", "group"}},
		"deb postinst first install":  {script: postinstall, args: []string{"configure", ""}, booted: true, want: slices.Concat(mkState, []string{"systemctl daemon-reload"})},
		"deb postinst upgrade":        {script: postinstall, args: []string{"configure", "1.0"}, booted: true, have: []string{"state"}, want: []string{"systemctl daemon-reload", "systemctl try-restart " + u}},
		"deb postinst upgrade, new":   {script: postinstall, args: []string{"configure", "1.0"}, booted: true, want: slices.Concat(mkState, []string{"systemctl daemon-reload", "systemctl try-restart " + u})},
		"deb postinst, no systemd":    {script: postinstall, args: []string{"configure", "1.0"}, have: []string{"state"}},
		"deb postinst, chroot":        {script: postinstall, args: []string{"configure", ""}, want: mkState},
		"rpm post 1":                  {script: postinstall, args: []string{"1"}, booted: true, want: slices.Concat(mkState, []string{"systemctl daemon-reload"})},
		"rpm post 2":                  {script: postinstall, args: []string{"2"}, booted: true, have: []string{"state"}, want: []string{"systemctl daemon-reload", "systemctl try-restart " + u}},
		"deb postinst abort-upgrade":  {script: postinstall, args: []string{"abort-upgrade", "1.0"}, booted: true, have: []string{"state"}, want: []string{"systemctl daemon-reload"}},
		"deb prerm remove":            {script: preremove, args: []string{"remove"}, booted: true, want: []string{"systemctl stop " + u, "systemctl --no-reload disable " + u}},
		"deb prerm remove, offline":   {script: preremove, args: []string{"remove"}, want: []string{"systemctl --no-reload disable " + u}},
		"deb prerm upgrade":           {script: preremove, args: []string{"upgrade", "2.0"}, booted: true},
		"rpm preun 0":                 {script: preremove, args: []string{"0"}, booted: true, want: []string{"systemctl stop " + u, "systemctl --no-reload disable " + u}},
		"rpm preun 1":                 {script: preremove, args: []string{"1"}, booted: true},
		"deb postrm remove":           {script: postremove, args: []string{"remove"}, booted: true, want: []string{"systemctl daemon-reload"}},
		"deb postrm purge":            {script: postremove, args: []string{"purge"}, booted: true, want: []string{"systemctl daemon-reload"}},
		"deb postrm purge, no system": {script: postremove, args: []string{"purge"}},
		"deb postrm upgrade":          {script: postremove, args: []string{"upgrade", "2.0"}, booted: true},
		"rpm postun 0":                {script: postremove, args: []string{"0"}, booted: true, want: []string{"systemctl daemon-reload"}},
		"rpm postun 1":                {script: postremove, args: []string{"1"}, booted: true},
	} {
		for _, p := range products {
			t.Run(p.name+"/"+name, func(t *testing.T) {
				var want []string
				for _, w := range c.want {
					want = append(want, strings.NewReplacer(u, p.unit(), state, p.stateDir).Replace(w))
				}
				got := runScript(t, sourceScripts(t, p)[c.script], c.args, c.booted, c.have)
				if !slices.Equal(got, want) {
					t.Errorf("%s %q ran\n  %q\nwant\n  %q", c.script, c.args, got, want)
				}
			})
		}
	}
}

// runScript runs an install script with stand-ins for systemctl, getent,
// useradd and install and returns the commands it ran. The script's test
// for a booted systemd is pointed at a folder that exists when booted is
// true, and /var/lib/qianzhi at one that holds the state folders when have
// has "state".
func runScript(t *testing.T, script string, args []string, booted bool, have []string) []string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	log := filepath.Join(dir, "log")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	varLib := filepath.Join(dir, "var-lib-qianzhi")
	if slices.Contains(have, "state") {
		for _, p := range products {
			if err := os.MkdirAll(strings.Replace(p.stateDir, "/var/lib/qianzhi", varLib, 1), 0o750); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A stand-in logs its command line; getent succeeds for the databases in have.
	for _, name := range []string{"systemctl", "useradd", "getent", "install"} {
		body := "#!/bin/sh\necho \"$(basename \"$0\") $*\" >>" + log + "\n"
		if name == "getent" {
			body = "#!/bin/sh\ncase \" " + strings.Join(have, " ") + " \" in *\" $1 \"*) exit 0 ;; esac\nexit 2\n"
		}
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	systemd := filepath.Join(dir, "run-systemd-system")
	if booted {
		if err := os.Mkdir(systemd, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(script, "systemctl") && !strings.Contains(script, "[ -d /run/systemd/system ]") {
		t.Fatal("the script calls systemctl without checking [ -d /run/systemd/system ]")
	}
	script = strings.NewReplacer("/run/systemd/system", systemd, "/var/lib/qianzhi", varLib).Replace(script)
	cmd := exec.Command("sh", append([]string{"-c", script, "script"}, args...)...)
	cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh %q: %v\n%s", args, err, out)
	}
	b, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(strings.ReplaceAll(string(b), varLib, "/var/lib/qianzhi")), "\n")
}
