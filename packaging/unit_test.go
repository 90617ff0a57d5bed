package packaging_test

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/central"
)

// product is one of the two packages and what it installs.
type product struct {
	name     string // package, binary and unit: qz-agent
	config   string // its config: /etc/qianzhi/agent.yaml
	stateDir string // the state_dir of that config and the unit's writable folder
	reload   bool   // the binary reloads its config on SIGHUP: systemctl reload
}

func (p product) unit() string   { return p.name + ".service" }
func (p product) binary() string { return "/usr/bin/" + p.name }
func (p product) example() string {
	return "/usr/share/doc/" + p.name + "/" + filepath.Base(p.config) + ".example"
}

var products = []product{
	{name: "qz-agent", config: agent.DefaultConfigPath, stateDir: "/var/lib/qianzhi/agent", reload: true},
	{name: "qz-central", config: central.DefaultConfigPath, stateDir: "/var/lib/qianzhi/central"},
}

// TestPackagedConfigs loads the configs the packages install with the
// binaries' own loaders: they are valid as shipped, with nothing configured
// yet, and keep the state where the units allow writes.
func TestPackagedConfigs(t *testing.T) {
	a, err := agent.LoadConfig("etc/agent.yaml")
	if err != nil {
		t.Fatalf("etc/agent.yaml: %v", err)
	}
	if a.StateDir != products[0].stateDir {
		t.Errorf("etc/agent.yaml: state_dir %q, want %q", a.StateDir, products[0].stateDir)
	}
	if len(a.Resources) != 0 || len(a.Subscriptions) != 0 {
		t.Errorf("etc/agent.yaml declares %d resources and %d subscriptions; it ships with none", len(a.Resources), len(a.Subscriptions))
	}
	c, err := central.LoadConfig("etc/central.yaml")
	if err != nil {
		t.Fatalf("etc/central.yaml: %v", err)
	}
	if c.StateDir != products[1].stateDir {
		t.Errorf("etc/central.yaml: state_dir %q, want %q", c.StateDir, products[1].stateDir)
	}
	if _, err := c.Calendar(); err != nil {
		t.Errorf("etc/central.yaml: calendar: %v", err)
	}
	// Both binaries default to these paths, and the defaults agree.
	if d := agent.DefaultConfig().StateDir; d != products[0].stateDir {
		t.Errorf("qz-agent's default state_dir %q, the package's %q", d, products[0].stateDir)
	}
	if d := central.DefaultConfig().StateDir; d != products[1].stateDir {
		t.Errorf("qz-central's default state_dir %q, the package's %q", d, products[1].stateDir)
	}
}

// TestUnits checks the unit files in this folder as TestDeb and TestRPM
// check the ones in the packages.
func TestUnits(t *testing.T) {
	for _, p := range products {
		t.Run(p.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("systemd", p.unit()))
			if err != nil {
				t.Fatal(err)
			}
			checkUnit(t, p, string(b))
		})
	}
}

// unit is a parsed unit file: section, then key, then every value given.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, text string) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasSuffix(line, `\`):
			t.Fatalf("line %d: continued lines are not expected here: %s", n, line)
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("line %d: not key=value in a section: %s", n, line)
			}
			key = strings.TrimSpace(key)
			u[section][key] = append(u[section][key], strings.TrimSpace(value))
		}
	}
	return u
}

// last is the value in force of a single-valued key, and whether it is set.
func (u unit) last(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// checkUnit checks what the service must be: started by systemd with
// readiness and watchdog, restarted on failure, as the qianzhi user, in a
// read-only system except its state.
func checkUnit(t *testing.T, p product, text string) {
	t.Helper()
	u := parseUnit(t, text)
	want := map[string]string{
		"Type":                  "notify",
		"NotifyAccess":          "main",
		"WatchdogSec":           "30s",
		"Restart":               "on-failure",
		"User":                  "qianzhi",
		"Group":                 "qianzhi",
		"ExecStart":             p.binary() + " run --config " + p.config,
		"ExecStartPre":          p.binary() + " config check --config " + p.config,
		"StateDirectory":        strings.TrimPrefix(p.stateDir, "/var/lib/"),
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"PrivateTmp":            "yes",
		"NoNewPrivileges":       "yes",
		"CapabilityBoundingSet": "", // empty: no capability at all
	}
	for key, w := range want {
		got, ok := u.last("Service", key)
		if !ok {
			t.Errorf("[Service] %s is missing; want %s=%s", key, key, w)
		} else if got != w {
			t.Errorf("[Service] %s=%s, want %s=%s", key, got, key, w)
		}
	}
	if cbs := u["Service"]["CapabilityBoundingSet"]; len(cbs) != 1 {
		t.Errorf("[Service] CapabilityBoundingSet given %d times (%q); want it once, empty", len(cbs), cbs)
	}
	// Writable: the state folder, which holds the default spool, and nothing
	// else (subscription folders come with a drop-in).
	if rw := u["Service"]["ReadWritePaths"]; !slices.Equal(rw, []string{p.stateDir}) {
		t.Errorf("[Service] ReadWritePaths %q, want only %s", rw, p.stateDir)
	}
	if v, _ := u.last("Service", "LimitNOFILE"); v == "" {
		t.Error("[Service] LimitNOFILE is missing")
	} else if n, err := strconv.Atoi(v); err != nil || n < 4096 {
		t.Errorf("[Service] LimitNOFILE=%s, want a number of at least 4096", v)
	}
	// Only a binary that reloads on SIGHUP may get one: Go's default for
	// SIGHUP is to exit.
	if v, ok := u.last("Service", "ExecReload"); p.reload && v != "/bin/kill -HUP $MAINPID" {
		t.Errorf("[Service] ExecReload=%s, want /bin/kill -HUP $MAINPID (systemctl reload)", v)
	} else if !p.reload && ok {
		t.Errorf("[Service] ExecReload=%s, but %s does not reload on SIGHUP", v, p.name)
	}
	if v, _ := u.last("Install", "WantedBy"); v != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%s, want multi-user.target", v)
	}
}
