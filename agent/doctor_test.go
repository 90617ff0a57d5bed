package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"gopkg.in/yaml.v3"

	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/transport"
)

func TestDoctorClockSkew(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	cases := []struct {
		name           string
		rtt            time.Duration
		hubAt          time.Duration // the hub's clock, from t0
		skew, uncertty time.Duration
	}{
		{"in step, read mid-way", 10 * ms, 5 * ms, 0, 5 * ms},
		{"hub ahead", 10 * ms, 10*time.Minute + 5*ms, 10 * time.Minute, 5 * ms},
		{"hub behind", 10 * ms, -10*time.Minute + 5*ms, -10 * time.Minute, 5 * ms},
		{"read at the start of a slow round trip", 2 * time.Second, 0, -time.Second, time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			skew, unc := clockSkew(t0, t0.Add(c.rtt), t0.Add(c.hubAt))
			if skew != c.skew || unc != c.uncertty {
				t.Errorf("skew %s ± %s, want %s ± %s", skew, unc, c.skew, c.uncertty)
			}
		})
	}
}

func TestDoctorSkewFinding(t *testing.T) {
	cases := []struct {
		name      string
		skew, unc time.Duration
		verdict   string
		phrase    string
	}{
		{"in step", 300 * time.Microsecond, 100 * time.Microsecond, VerdictOK, "agree to within 400µs"},
		{"just under the warning", 1900 * time.Millisecond, 0, VerdictOK, "agree"},
		{"hub ahead: this clock is behind", 3 * time.Second, 10 * time.Millisecond, VerdictWarn, "3s behind the hub's (±10ms)"},
		{"this clock ahead", -3 * time.Second, 10 * time.Millisecond, VerdictWarn, "3s ahead of the hub's"},
		{"a slow link alone does not warn", 3 * time.Second, 2 * time.Second, VerdictOK, "agree"},
		{"a minute and a bit, within the uncertainty", 61 * time.Second, 2 * time.Second, VerdictWarn, "1m1s behind"},
		{"ten minutes ahead", -10 * time.Minute, time.Millisecond, VerdictFail, "10m0s ahead of the hub's"},
		{"ten minutes behind", 10 * time.Minute, time.Millisecond, VerdictFail, "10m0s behind the hub's"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := skewFinding(c.skew, c.unc)
			if f.Verdict != c.verdict || !strings.Contains(f.Detail, c.phrase) {
				t.Errorf("got %s %q, want %s with %q", f.Verdict, f.Detail, c.verdict, c.phrase)
			}
			if (f.Verdict == VerdictOK) != (f.Fix == "") {
				t.Errorf("fix %q with verdict %s", f.Fix, f.Verdict)
			}
			if f.Verdict != VerdictOK && !strings.Contains(f.Fix, "synchronise this server's clock") {
				t.Errorf("fix does not say to synchronise the clock: %q", f.Fix)
			}
		})
	}
}

func TestDoctorClockFindingWithoutAnswer(t *testing.T) {
	f := clockFinding(hubProbe{quic: ping{err: errors.New("x")}, tcp: ping{err: errors.New("y")}})
	if f.Verdict != VerdictWarn || !strings.Contains(f.Detail, "not checked") {
		t.Errorf("got %+v", f)
	}
	// Over TCP when QUIC fails, and the Date header's second counts in
	// the uncertainty.
	now := time.Now()
	f = clockFinding(hubProbe{quic: ping{err: errors.New("x")}, tcp: ping{sent: now, received: now, hubTime: now.Add(-1500 * time.Millisecond), resolution: time.Second}})
	if f.Verdict != VerdictOK {
		t.Errorf("a 1.5s skew measured to the second: %+v", f)
	}
}

func TestDoctorDiskFinding(t *testing.T) {
	const (
		MiB = 1 << 20
		GiB = 1 << 30
	)
	need := uint64(2*4*MiB + diskReserve)
	cases := []struct {
		name         string
		total, avail uint64
		spool        *spoolUse
		verdict      string
		phrases      []string
	}{
		{"plenty", 100 * GiB, 60 * GiB, &spoolUse{used: 5 * MiB, quota: GiB}, VerdictOK, []string{"60 GiB free of 100 GiB (60%)", "5.0 MiB of its 1.0 GiB quota"}},
		{"nearly full", 32 * MiB, MiB, &spoolUse{quota: 16 * MiB}, VerdictFail, []string{"nearly full", "1.0 MiB free of 32 MiB (3%)", "at least 24 MiB", "free space on the filesystem of /var/lib/qianzhi/agent"}},
		{"nearly full without the spool", 100 * GiB, 10 * MiB, nil, VerdictFail, []string{"nearly full", "move state_dir in"}},
		{"spool may fill the disk", 100 * GiB, 11 * GiB, &spoolUse{used: 2 * GiB, quota: 20 * GiB}, VerdictWarn, []string{"less than the spool may still take", "spool.quota 20 GiB", "lower spool.quota in /etc/qianzhi/agent.yaml to at most 12GiB"}},
		{"spool past its quota is no headroom question", 100 * GiB, 50 * GiB, &spoolUse{used: 2 * GiB, quota: GiB}, VerdictOK, nil},
		{"filling up", 1000 * GiB, 80 * GiB, &spoolUse{quota: GiB}, VerdictWarn, []string{"filling up: 80 GiB free of 1000 GiB (8%)"}},
		{"headroom does not matter without the spool", 100 * GiB, 20 * GiB, nil, VerdictOK, []string{"20 GiB free"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := diskSpace{dir: "/var/lib/qianzhi/agent", total: c.total, avail: c.avail}
			f := diskFinding("disk", "state_dir and spool", d, need, c.spool, "/etc/qianzhi/agent.yaml")
			if f.Verdict != c.verdict {
				t.Errorf("verdict %s, want %s: %s", f.Verdict, c.verdict, f.Detail)
			}
			for _, p := range c.phrases {
				if !strings.Contains(f.Detail+" | "+f.Fix, p) {
					t.Errorf("%q not in %q | %q", p, f.Detail, f.Fix)
				}
			}
			if (f.Verdict == VerdictOK) != (f.Fix == "") {
				t.Errorf("fix %q with verdict %s", f.Fix, f.Verdict)
			}
		})
	}
}

func TestDoctorStatDiskOfAFolderNotYetMade(t *testing.T) {
	dir := t.TempDir()
	d, err := statDisk(dir + "/state/spool")
	if err != nil {
		t.Fatal(err)
	}
	if d.dir != dir || d.total == 0 || d.avail > d.total {
		t.Errorf("got %+v for %s", d, dir)
	}
}

func TestDoctorCertFinding(t *testing.T) {
	now := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	cfg := DefaultConfig()
	id := func(from, to time.Duration) *Identity {
		return &Identity{NodeID: "dept-a", Leaf: &x509.Certificate{NotBefore: now.Add(from), NotAfter: now.Add(to)}}
	}
	cases := []struct {
		name    string
		id      *Identity
		err     error
		verdict string
		phrases []string
	}{
		{"not enrolled", nil, fmt.Errorf("%w: run enroll", ErrNotEnrolled), VerdictFail, []string{"not enrolled", "qz-agent enroll --config /etc/qianzhi/agent.yaml --token TOKEN", "hub: 127.0.0.1:7443"}},
		{"damaged", nil, errors.New("node certificate and key do not match"), VerdictFail, []string{"do not match", "restore"}},
		{"a year left", id(-day, 364*day), nil, VerdictOK, []string{"node dept-a", "364 days left"}},
		{"ten days left of a year", id(-355*day, 10*day), nil, VerdictWarn, []string{"expires in 10 days", "renews its certificate by itself"}},
		{"expired", id(-365*day, -time.Hour), nil, VerdictFail, []string{"expired", "qz-central node token dept-a"}},
		{"not yet valid", id(time.Hour, 365*day), nil, VerdictFail, []string{"not valid before", "synchronise this server's clock"}},
		{"three days left of a week: not yet due", id(-4*day, 3*day), nil, VerdictOK, []string{"3 days left"}},
		{"a day left of a week", id(-6*day, day+time.Hour), nil, VerdictWarn, []string{"expires in 1 day"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := certFinding(c.id, c.err, cfg, "/etc/qianzhi/agent.yaml", now)
			if f.Verdict != c.verdict {
				t.Errorf("verdict %s, want %s: %s", f.Verdict, c.verdict, f.Detail)
			}
			for _, p := range c.phrases {
				if !strings.Contains(f.Detail+" | "+f.Fix, p) {
					t.Errorf("%q not in %q | %q", p, f.Detail, f.Fix)
				}
			}
		})
	}
}

func TestDoctorHubFindings(t *testing.T) {
	up := ping{sent: time.Now(), received: time.Now().Add(2 * time.Millisecond)}
	silent := ping{err: errors.New("timeout"), why: failTimeout, reason: "gave up after 4s"}
	refused := ping{err: errors.New("refused"), why: failRefused, reason: "connection refused: nothing listens on TCP port 7443"}
	revoked := ping{err: errors.New("bad certificate"), why: failCertRefused, reason: "the hub refused this node's certificate at the handshake (tls: bad certificate)"}
	cases := []struct {
		name       string
		mode       string
		quic, tcp  ping
		enrolled   bool
		verdicts   [2]string // quic, tcp
		quicPhrase string
		tcpPhrase  string
	}{
		{"both answer", transport.Auto, up, up, true, [2]string{VerdictOK, VerdictOK}, "answered over QUIC in 2ms", "answered over TLS/TCP"},
		{"UDP blocked", transport.Auto, silent, up, true, [2]string{VerdictWarn, VerdictOK}, "UDP seems blocked: the agent falls back to TLS/TCP (slower)", ""},
		{"UDP blocked, transport tcp", transport.TCP, silent, up, true, [2]string{VerdictOK, VerdictOK}, "not used (transport: tcp)", ""},
		{"UDP blocked, transport quic", transport.QUIC, silent, up, true, [2]string{VerdictFail, VerdictOK}, "does not fall back", ""},
		{"hub down", transport.Auto, silent, refused, true, [2]string{VerdictFail, VerdictFail}, "hub unreachable at hub.example:7443 over QUIC", "hub unreachable at hub.example:7443 over TLS/TCP: connection refused"},
		{"TCP blocked", transport.Auto, up, refused, true, [2]string{VerdictOK, VerdictWarn}, "", "fallback for networks that block UDP would not"},
		{"TCP blocked, transport quic", transport.QUIC, up, refused, true, [2]string{VerdictOK, VerdictOK}, "", "not used (transport: quic)"},
		{"TCP blocked, transport tcp", transport.TCP, up, refused, true, [2]string{VerdictOK, VerdictFail}, "though transport: auto would use it", "does not use QUIC"},
		{"revoked", transport.Auto, revoked, revoked, true, [2]string{VerdictFail, VerdictFail}, "node dept-a is revoked", "qz-central node token dept-a"},
		{"not enrolled", transport.Auto, up, up, false, [2]string{VerdictOK, VerdictOK}, "checked only once this node is enrolled", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := hubFindings(hubProbe{quic: c.quic, tcp: c.tcp, enrolled: c.enrolled, addr: "hub.example:7443", mode: c.mode,
				file: "/etc/qianzhi/agent.yaml", node: "dept-a", identityDir: "/var/lib/qianzhi/agent/identity"})
			if len(fs) != 2 || fs[0].Check != "hub quic" || fs[1].Check != "hub tcp" {
				t.Fatalf("got %+v", fs)
			}
			for i, p := range []string{c.quicPhrase, c.tcpPhrase} {
				f := fs[i]
				if f.Verdict != c.verdicts[i] {
					t.Errorf("%s: verdict %s, want %s: %s", f.Check, f.Verdict, c.verdicts[i], f.Detail)
				}
				if !strings.Contains(f.Detail+" | "+f.Fix, p) {
					t.Errorf("%s: %q not in %q | %q", f.Check, p, f.Detail, f.Fix)
				}
				if (f.Verdict == VerdictOK) != (f.Fix == "") {
					t.Errorf("%s: fix %q with verdict %s", f.Check, f.Fix, f.Verdict)
				}
			}
		})
	}
	// The fix for a blocked UDP port names the port and the setting.
	f := hubFindings(hubProbe{quic: silent, tcp: up, enrolled: true, addr: "hub.example:7443", mode: transport.Auto, file: "/etc/qianzhi/agent.yaml"})[0]
	if want := "open UDP port 7443 from this server to hub.example"; !strings.Contains(f.Fix, want) || !strings.Contains(f.Fix, "set transport: tcp in /etc/qianzhi/agent.yaml") {
		t.Errorf("fix %q", f.Fix)
	}
}

func TestDoctorPrintFindings(t *testing.T) {
	fs := []Finding{
		{Check: "hub quic", Verdict: VerdictWarn, Detail: "no answer over QUIC", Fix: "open UDP port 7443"},
		{Check: "hub tcp", Verdict: VerdictOK, Detail: "answered", Fix: ""},
		{Check: "resource dept-a.people", Verdict: VerdictFail, Detail: "access denied", Fix: "check the password"},
	}
	var b bytes.Buffer
	if err := printFindings(&b, fs); err != nil {
		t.Fatal(err)
	}
	want := `warn  hub quic                no answer over QUIC
  fix: open UDP port 7443
ok    hub tcp                 answered
FAIL  resource dept-a.people  access denied
  fix: check the password
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := printJSON(&b, fs[:1]); err != nil {
		t.Fatal(err)
	}
	var back []map[string]string
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 1 || back[0]["check"] != "hub quic" || back[0]["verdict"] != "warn" || back[0]["detail"] == "" || back[0]["fix"] == "" {
		t.Errorf("JSON: %s", b.String())
	}
}

func TestDoctorEntryFix(t *testing.T) {
	entry := func(src string) Entry {
		var e Entry
		if err := yaml.Unmarshal([]byte(src), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	withDSN := entry("id: dept-a.people\nkind: mysql\ntable: people\ndsn: \"u:p@tcp(db:3306)/x\"\n")
	withFile := entry("id: dept-a.people\nkind: mysql\ndsn_file: /etc/qianzhi/people.dsn\n")
	cases := []struct {
		name  string
		e     Entry
		err   error
		wants []string
	}{
		{"wrong password", withDSN, fmt.Errorf("connect to mysql: %w", &mysql.MySQLError{Number: 1045, Message: "Access denied"}), []string{"check the user and password in the dsn of resource dept-a.people in agent.yaml (line 4)"}},
		{"wrong password, dsn in a file", withFile, &mysql.MySQLError{Number: 1045}, []string{"user and password in the dsn in /etc/qianzhi/people.dsn (dsn_file of resource dept-a.people in agent.yaml (line 1))"}},
		{"dsn file missing", withFile, fmt.Errorf("dsn_file: %w", fs.ErrNotExist), []string{"check dsn_file of resource dept-a.people", "/etc/qianzhi/people.dsn must exist"}},
		{"no rights", withDSN, &mysql.MySQLError{Number: 1044}, []string{"grant the user"}},
		{"unknown database", withDSN, &mysql.MySQLError{Number: 1049}, []string{"database name"}},
		{"unreachable", withDSN, fmt.Errorf("connect: %w", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}), []string{"host and port", "line 4"}},
		{"no answer", withDSN, errOpenTimeout, []string{"host and port"}},
		{"anything else", withDSN, errors.New("table people does not exist"), []string{"correct resource dept-a.people in agent.yaml (line 1)", "qz-agent config check"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fix := entryFix("resource", c.e, "agent.yaml", c.err)
			for _, w := range c.wants {
				if !strings.Contains(fix, w) {
					t.Errorf("%q not in %q", w, fix)
				}
			}
		})
	}
}

func TestDoctorQuotaText(t *testing.T) {
	for n, want := range map[uint64]string{16 << 20: "16MiB", 1<<30 - 1: "1023MiB", 13<<30 - 1: "12GiB"} {
		if got := quotaText(n); got != want {
			t.Errorf("quotaText(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDoctorSizeText(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1 << 20: "1.0 MiB", 980 << 10: "980 KiB", 24 << 20: "24 MiB", 1536 << 20: "1.5 GiB", 3 << 40: "3.0 TiB"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestDoctorDiagnoseTCP tells a refused certificate, an untrusted hub and a
// closed port apart over real TLS on loopback.
func TestDoctorDiagnoseTCP(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	skey, _ := pki.NewKey()
	scert, err := ca.IssueServer(skey.Public(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ckey, _ := pki.NewKey()
	csrPEM, _ := pki.NewCSR(ckey)
	csr, _ := pki.ParseCSR(csrPEM)
	ccert, err := ca.IssueNode(csr, "dept-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serve := func(refuse bool) string {
		pool := x509.NewCertPool()
		pool.AddCert(ca.Cert)
		conf := &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{{Certificate: [][]byte{scert.Raw}, PrivateKey: skey}},
			ClientCAs:    pool,
			ClientAuth:   tls.VerifyClientCertIfGiven,
			NextProtos:   []string{"h2"},
			VerifyConnection: func(tls.ConnectionState) error {
				if refuse {
					return errors.New("node dept-a is revoked")
				}
				return nil
			},
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					if c.(*tls.Conn).Handshake() == nil {
						c.Write([]byte("settings"))
					}
					c.Read(make([]byte, 1))
				}()
			}
		}()
		return ln.Addr().String()
	}
	client := func(root *x509.Certificate) *tls.Config {
		pool := x509.NewCertPool()
		pool.AddCert(root)
		return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1",
			Certificates: []tls.Certificate{{Certificate: [][]byte{ccert.Raw}, PrivateKey: ckey}}}
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	cases := []struct {
		name   string
		addr   string
		root   *x509.Certificate
		want   failure
		phrase string
	}{
		{"accepted", serve(false), ca.Cert, failOther, "accepts TLS/TCP connections"},
		{"certificate refused", serve(true), ca.Cert, failCertRefused, "refused this node's certificate"},
		{"hub not trusted", serve(false), other.Cert, failHubUntrusted, "does not trust the hub's certificate"},
		{"nothing listens", closedAddr, ca.Cert, failRefused, "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			why, reason := diagnoseTCP(context.Background(), c.addr, client(c.root))
			if why != c.want || !strings.Contains(reason, c.phrase) {
				t.Errorf("got %d %q, want %d with %q", why, reason, c.want, c.phrase)
			}
		})
	}
}
