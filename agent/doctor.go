package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/sijms/go-ora/v2/network"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/transport"
)

// Verdicts of qz-agent doctor's checks.
const (
	VerdictOK   = "ok"
	VerdictWarn = "warn"
	VerdictFail = "FAIL"
)

// Finding is the outcome of one of qz-agent doctor's checks: what was
// found and, unless the verdict is ok, what to do about it.
type Finding struct {
	Check   string `json:"check"`
	Verdict string `json:"verdict"`
	Detail  string `json:"detail"`
	Fix     string `json:"fix"`
}

const (
	// doctorHubTimeout bounds each hub check (connect and two pings). The
	// transport gives up a QUIC handshake after 4 s, so a blocked UDP port
	// shows as a failure rather than as this timeout.
	doctorHubTimeout = 5 * time.Second
	// doctorOpenTimeout bounds opening one resource or subscription; the
	// MySQL driver's own connect timeout is 10 s, too long to wait for here.
	doctorOpenTimeout = 8 * time.Second

	// A clock this far from the hub's is worth a warning: servers that
	// synchronise with NTP agree to within milliseconds, so 2 s means this
	// one does not, and the two sides' logs and receipt times stop lining
	// up.
	skewWarn = 2 * time.Second
	// A clock this far off fails. Receipts, the evidence of delivery, carry
	// this server's time, and copy windows (limits.window) follow its clock
	// while grant terms follow the hub's: a minute off shows in the audit
	// and moves a window's edges. It also stays well inside the 5 minutes
	// by which certificates are backdated, beyond which a server behind
	// the hub sees a newly issued certificate as not yet valid.
	skewFail = time.Minute

	// certWarnLeft is when a certificate's remaining life is worth a
	// warning; a quarter of its life if that is shorter (short-lived
	// certificates). The running agent renews with a third left, so by then
	// renewal has been failing, or the agent has not run, for a while.
	certWarnLeft = 14 * 24 * time.Hour

	// diskReserve is room the state database and its write-ahead log need
	// beyond two batches (one being spooled, one received into the inbox).
	diskReserve = 16 << 20
)

// doctor prints qz-agent doctor's findings and fails when one of them does.
func doctor(ctx context.Context, cfg Config, path string, asJSON bool, w io.Writer) error {
	fs := Doctor(ctx, cfg, path)
	var err error
	if asJSON {
		err = printJSON(w, fs)
	} else {
		err = printFindings(w, fs)
	}
	if err != nil {
		return err
	}
	failed := 0
	for _, f := range fs {
		if f.Verdict == VerdictFail {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed", failed, len(fs))
	}
	return nil
}

// Doctor checks what the agent depends on — the hub over QUIC and over
// TLS/TCP, the node's certificate, the clock against the hub's, every
// resource and subscription, and disk space for the state and the spool —
// and explains each finding. path is the configuration file, named in the
// fixes ("" for the defaults). The checks that wait on the network run
// concurrently, each with a short timeout.
func Doctor(ctx context.Context, cfg Config, path string) []Finding {
	if path == "" {
		path = DefaultConfigPath
	} else if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	id, idErr := LoadIdentity(cfg.identityDir())
	if idErr != nil {
		id = nil
	}
	var (
		wg       sync.WaitGroup
		hub      hubProbe
		resource = make([]Finding, len(cfg.Resources))
		sub      = make([]Finding, len(cfg.Subscriptions))
	)
	wg.Go(func() { hub = probeHub(ctx, cfg, id) })
	for i, e := range cfg.Resources {
		wg.Go(func() { resource[i] = checkEntry(ctx, e, true, path) })
	}
	for i, e := range cfg.Subscriptions {
		wg.Go(func() { sub[i] = checkEntry(ctx, e, false, path) })
	}
	cert := certFinding(id, idErr, cfg, path, time.Now())
	disk := diskFindings(cfg, path)
	wg.Wait()

	hub.addr, hub.mode, hub.file = cfg.Hub, cfg.Transport, path
	if id != nil {
		hub.node, hub.identityDir = id.NodeID, cfg.identityDir()
	}
	out := hubFindings(hub)
	out = append(out, cert)
	out = append(out, clockFinding(hub))
	out = append(out, resource...)
	out = append(out, sub...)
	return append(out, disk...)
}

// printFindings writes one line per check, and a fix line under each that
// is not ok.
func printFindings(w io.Writer, fs []Finding) error {
	width := 0
	for _, f := range fs {
		width = max(width, len(f.Check))
	}
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "%-4s  %-*s  %s\n", f.Verdict, width, f.Check, f.Detail)
		if f.Verdict != VerdictOK && f.Fix != "" {
			fmt.Fprintf(&b, "  fix: %s\n", f.Fix)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Hub checks.

// failure is why a ping failed, as far as it can be told.
type failure int

const (
	failOther        failure = iota
	failTimeout              // no answer in time
	failRefused              // nothing listens on the port
	failCertRefused          // the hub refused this node's certificate
	failHubUntrusted         // this node does not trust the hub's certificate
)

// ping is the outcome of pinging the hub over one transport.
type ping struct {
	err    error
	why    failure
	reason string // the failure in a few words
	// sent and received bracket the last ping; hubTime is the hub's clock
	// as it answered, to within resolution.
	sent, received time.Time
	hubTime        time.Time
	resolution     time.Duration
}

func (p ping) ok() bool           { return p.err == nil }
func (p ping) rtt() time.Duration { return p.received.Sub(p.sent) }
func (p ping) hasClock() bool     { return p.ok() && !p.hubTime.IsZero() }
func (p ping) certRefused() bool  { return p.why == failCertRefused }
func (p ping) hubUntrusted() bool { return p.why == failHubUntrusted }

// hubProbe is what the hub checks found.
type hubProbe struct {
	quic, tcp ping
	// enrolled is false when the probes could not check the hub's
	// certificate, the node having none yet.
	enrolled bool

	addr, mode, file  string
	node, identityDir string
}

// probeHub pings the hub over QUIC and over TLS/TCP at once, each through
// the agent's own transport client.
func probeHub(ctx context.Context, cfg Config, id *Identity) hubProbe {
	var conf *tls.Config
	if id != nil {
		conf = id.ClientTLS(cfg.Hub)
	} else {
		// Not enrolled yet: there is no CA to check the hub against. The
		// probe still tells whether the hub can be reached, which is what
		// an installer wants to know before enrolling; it sends nothing
		// but a ping and trusts the answer for nothing but that.
		host, _, _ := net.SplitHostPort(cfg.Hub)
		conf = &tls.Config{MinVersion: tls.VersionTLS13, ServerName: host, InsecureSkipVerify: true}
	}
	p := hubProbe{enrolled: id != nil}
	var wg sync.WaitGroup
	wg.Go(func() { p.quic = pingHub(ctx, cfg.Hub, conf, transport.QUIC) })
	wg.Go(func() {
		p.tcp = pingHub(ctx, cfg.Hub, conf, transport.TCP)
		if !p.tcp.ok() {
			p.tcp.why, p.tcp.reason = diagnoseTCP(ctx, cfg.Hub, conf)
		}
	})
	wg.Wait()
	if !p.quic.ok() && p.quic.why != failTimeout {
		// What TLS/TCP learnt about the certificates holds for QUIC too,
		// whose handshake errors carry TLS alerts as QUIC error codes.
		if p.tcp.certRefused() || p.tcp.hubUntrusted() {
			p.quic.why, p.quic.reason = p.tcp.why, p.tcp.reason
		}
	}
	return p
}

// pingHub sends two pings over one transport: the first connects (the
// client probes with a ping of its own), the second, on the open
// connection, times a round trip alone for the clock check.
func pingHub(ctx context.Context, addr string, conf *tls.Config, mode string) ping {
	ctx, cancel := context.WithTimeout(ctx, doctorHubTimeout)
	defer cancel()
	c := &transport.Client{Hub: addr, TLS: conf, Mode: mode}
	defer c.Close()
	var p ping
	for range 2 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL("/v1/ping"), nil)
		if err != nil {
			return ping{err: err, reason: err.Error()}
		}
		sent := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			took := time.Since(sent)
			switch {
			case ctx.Err() != nil:
				return ping{err: err, why: failTimeout, reason: "no answer within " + doctorHubTimeout.String()}
			case isTimeout(err):
				// The client gave up on the handshake (QUIC's handshake
				// timeout): no answer came.
				return ping{err: err, why: failTimeout, reason: "gave up after " + shortDuration(took).String()}
			}
			return ping{err: err, reason: err.Error()}
		}
		received := time.Now()
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err := fmt.Errorf("ping answered %s", resp.Status)
			return ping{err: err, reason: err.Error()}
		}
		p = ping{sent: sent, received: received}
		p.hubTime, p.resolution = hubClock(resp.Header)
	}
	return p
}

// isTimeout reports whether err, or a cause it wraps, is a timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// hubClock reads the hub's clock from a ping's answer: Qz-Time, or the
// HTTP Date header (to the second) from a hub without it.
func hubClock(h http.Header) (time.Time, time.Duration) {
	if t, err := time.Parse(time.RFC3339Nano, h.Get(api.HeaderTime)); err == nil {
		return t, 0
	}
	if t, err := http.ParseTime(h.Get("Date")); err == nil {
		return t, time.Second
	}
	return time.Time{}, 0
}

// diagnoseTCP dials the hub over TLS/TCP itself to tell why a ping failed.
// In TLS 1.3 the hub refuses a client certificate only after the
// handshake, as an alert on the first read: a connection of our own tells
// that, an untrusted hub and a closed port apart, with their types.
func diagnoseTCP(ctx context.Context, addr string, conf *tls.Config) (failure, string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	tc := conf.Clone()
	tc.NextProtos = []string{"h2"}
	d := tls.Dialer{Config: tc}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		defer conn.Close()
		// In TLS 1.3 the hub judges this node's certificate after the
		// client's side of the handshake is done: its refusal arrives as
		// an alert on the first read. An HTTP/2 server speaks first, so an
		// accepted connection reads its settings.
		deadline, _ := ctx.Deadline()
		conn.SetReadDeadline(deadline)
		_, err = conn.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			return failOther, "the hub accepts TLS/TCP connections, but its ping failed"
		}
	}
	var (
		op      *net.OpError
		verr    *tls.CertificateVerificationError
		invalid x509.CertificateInvalidError
		ne      net.Error
	)
	switch {
	case errors.As(err, &verr) && errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return failHubUntrusted, "the hub's certificate is expired or not yet valid by this server's clock (" + invalid.Error() + ")"
	case errors.As(err, &verr):
		return failHubUntrusted, "this node does not trust the hub's certificate (" + verr.Err.Error() + ")"
	case errors.As(err, &op) && op.Op == "remote error":
		// How crypto/tls reports an alert sent by the peer.
		return failCertRefused, "the hub refused this node's certificate at the handshake (" + op.Err.Error() + ")"
	case errors.Is(err, syscall.ECONNREFUSED):
		return failRefused, "connection refused: nothing listens on TCP port " + portOf(addr)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return failTimeout, "no answer within " + doctorHubTimeout.String()
	}
	return failOther, err.Error()
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

func hostOf(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	return host
}

// hubFindings turns the two probes into the "hub quic" and "hub tcp"
// findings. A transport the configuration does not use fails nothing.
func hubFindings(p hubProbe) []Finding {
	port, host := portOf(p.addr), hostOf(p.addr)
	quic := Finding{Check: "hub quic"}
	tcp := Finding{Check: "hub tcp"}
	unverified := ""
	if !p.enrolled {
		unverified = " (its certificate is checked only once this node is enrolled)"
	}
	reenrol := fmt.Sprintf("ask the hub's operator about node %s ('qz-central node list'); to enrol again, get a token with 'qz-central node token %s', move %s away, and run 'qz-agent enroll --config %s --token TOKEN'",
		p.node, p.node, p.identityDir, p.file)
	ports := "UDP and TCP port " + port + " are"
	switch p.mode {
	case transport.TCP:
		ports = "TCP port " + port + " is"
	case transport.QUIC:
		ports = "UDP port " + port + " is"
	}
	unreachable := fmt.Sprintf("check that qz-central runs on %s ('systemctl status qz-central') and that hub: %s in %s is its address; then that %s open from this server to it",
		host, p.addr, p.file, ports)
	untrusted := fmt.Sprintf("check that hub: %s in %s names this exchange's hub, and this server's clock ('timedatectl'); if the hub was set up again with a new CA, enrol again", p.addr, p.file)

	switch {
	case p.quic.ok():
		quic.Verdict, quic.Detail = VerdictOK, fmt.Sprintf("%s answered over QUIC in %s%s", p.addr, shortDuration(p.quic.rtt()), unverified)
		if p.mode == transport.TCP {
			quic.Detail += "; not used (transport: tcp), though transport: auto would use it"
		}
	case p.quic.certRefused():
		quic.Verdict, quic.Detail, quic.Fix = VerdictFail, p.quic.reason+": node "+p.node+" is revoked, or its certificate was replaced by a later enrolment", reenrol
	case p.quic.hubUntrusted():
		quic.Verdict, quic.Detail, quic.Fix = VerdictFail, p.quic.reason, untrusted
	case p.mode == transport.TCP:
		quic.Verdict, quic.Detail = VerdictOK, fmt.Sprintf("no answer over QUIC (UDP port %s); not used (transport: tcp)", port)
	case !p.tcp.ok():
		quic.Verdict, quic.Detail, quic.Fix = VerdictFail, fmt.Sprintf("hub unreachable at %s over QUIC (UDP port %s): %s", p.addr, port, p.quic.reason), unreachable
	case p.mode == transport.QUIC:
		quic.Verdict = VerdictFail
		quic.Detail = fmt.Sprintf("no answer over QUIC (UDP port %s; %s), and transport: quic does not fall back to TLS/TCP, which works", port, p.quic.reason)
		quic.Fix = fmt.Sprintf("open UDP port %s from this server to %s (and its answers back) in every firewall between, or set transport: auto in %s", port, host, p.file)
	default:
		quic.Verdict = VerdictWarn
		quic.Detail = fmt.Sprintf("no answer over QUIC (UDP port %s; %s), while TLS/TCP works: UDP seems blocked: the agent falls back to TLS/TCP (slower)", port, p.quic.reason)
		quic.Fix = fmt.Sprintf("open UDP port %s from this server to %s (and its answers back) in every firewall between, or set transport: tcp in %s to stop trying QUIC", port, host, p.file)
	}

	switch {
	case p.tcp.ok():
		tcp.Verdict, tcp.Detail = VerdictOK, fmt.Sprintf("%s answered over TLS/TCP in %s%s", p.addr, shortDuration(p.tcp.rtt()), unverified)
	case p.tcp.certRefused():
		tcp.Verdict, tcp.Detail, tcp.Fix = VerdictFail, p.tcp.reason+": node "+p.node+" is revoked, or its certificate was replaced by a later enrolment", reenrol
	case p.tcp.hubUntrusted():
		tcp.Verdict, tcp.Detail, tcp.Fix = VerdictFail, p.tcp.reason, untrusted
	case p.mode == transport.QUIC:
		tcp.Verdict, tcp.Detail = VerdictOK, fmt.Sprintf("no answer over TLS/TCP (TCP port %s); not used (transport: quic): %s", port, p.tcp.reason)
	case !p.quic.ok():
		tcp.Verdict, tcp.Detail, tcp.Fix = VerdictFail, fmt.Sprintf("hub unreachable at %s over TLS/TCP: %s", p.addr, p.tcp.reason), unreachable
	case p.mode == transport.TCP:
		tcp.Verdict = VerdictFail
		tcp.Detail = fmt.Sprintf("no answer over TLS/TCP (%s) and transport: tcp does not use QUIC, which works", p.tcp.reason)
		tcp.Fix = fmt.Sprintf("open TCP port %s from this server to %s, or set transport: auto in %s", port, host, p.file)
	default:
		tcp.Verdict = VerdictWarn
		tcp.Detail = fmt.Sprintf("no answer over TLS/TCP (%s): QUIC works, but the fallback for networks that block UDP would not", p.tcp.reason)
		tcp.Fix = fmt.Sprintf("open TCP port %s from this server to %s; the hub serves it when its config has tcp: true", port, host)
	}
	return []Finding{quic, tcp}
}

// Certificate check.

// certFinding judges the node's certificate at now.
func certFinding(id *Identity, err error, cfg Config, file string, now time.Time) Finding {
	f := Finding{Check: "certificate"}
	switch {
	case errors.Is(err, ErrNotEnrolled):
		f.Verdict = VerdictFail
		f.Detail = "this agent is not enrolled (no certificate in " + cfg.identityDir() + ")"
		f.Fix = "run 'qz-agent enroll --config " + file + " --token TOKEN' with the token the hub's operator printed with 'qz-central node add' (hub: " + cfg.Hub + " in that file must be the hub's address)"
		return f
	case err != nil:
		f.Verdict, f.Detail = VerdictFail, err.Error()
		f.Fix = "restore " + cfg.identityDir() + " from a backup, or move it away and enrol again with a token from 'qz-central node token NODE'"
		return f
	}
	c := id.Leaf
	left := c.NotAfter.Sub(now)
	until := c.NotAfter.Local().Format(time.DateTime)
	reenrol := fmt.Sprintf("get a token with 'qz-central node token %s' on the hub, move %s away, and run 'qz-agent enroll --config %s --token TOKEN'", id.NodeID, cfg.identityDir(), file)
	switch {
	case now.Before(c.NotBefore):
		f.Verdict = VerdictFail
		f.Detail = fmt.Sprintf("node %s's certificate is not valid before %s by this server's clock", id.NodeID, c.NotBefore.Local().Format(time.DateTime))
		f.Fix = "synchronise this server's clock (chrony or systemd-timesyncd; check with 'timedatectl')"
	case left <= 0:
		f.Verdict = VerdictFail
		f.Detail = fmt.Sprintf("node %s's certificate expired on %s: the hub refuses it", id.NodeID, until)
		f.Fix = reenrol
	case left < min(certWarnLeft, c.NotAfter.Sub(c.NotBefore)/4):
		f.Verdict = VerdictWarn
		f.Detail = fmt.Sprintf("node %s's certificate expires in %s (%s)", id.NodeID, daysText(left), until)
		f.Fix = "the running agent renews its certificate by itself: check that it runs ('systemctl status qz-agent') and what its log says about renewal; if it cannot renew, " + reenrol
	default:
		f.Verdict = VerdictOK
		f.Detail = fmt.Sprintf("node %s, valid until %s (%s left)", id.NodeID, until, daysText(left))
	}
	return f
}

func daysText(d time.Duration) string {
	days := int(d / (24 * time.Hour))
	switch {
	case days == 1:
		return "1 day"
	case days > 1:
		return strconv.Itoa(days) + " days"
	}
	return shortDuration(d).String()
}

// Clock check.

// clockSkew is how far the hub's clock (read at hubTime, somewhere between
// sent and received) is ahead of this one, and how uncertain that is: the
// hub read its clock at an unknown point of the round trip, so the middle
// is the best guess and half the round trip the bound.
func clockSkew(sent, received, hubTime time.Time) (skew, uncertainty time.Duration) {
	half := received.Sub(sent) / 2
	return hubTime.Sub(sent.Add(half)), half
}

// clockFinding judges the skew measured by the hub checks, on the transport
// the agent would use.
func clockFinding(p hubProbe) Finding {
	f := Finding{Check: "clock"}
	pg := p.quic
	if p.mode == transport.TCP || !pg.hasClock() {
		pg = p.tcp
	}
	if !pg.hasClock() {
		pg = p.quic
	}
	if !pg.hasClock() {
		f.Verdict = VerdictWarn
		if p.quic.ok() || p.tcp.ok() {
			f.Detail = "not checked: the hub's answer carries no clock"
			f.Fix = "upgrade qz-central"
		} else {
			f.Detail = "not checked: the hub answered no ping"
			f.Fix = "fix the hub checks above, then run 'qz-agent doctor' again"
		}
		return f
	}
	skew, unc := clockSkew(pg.sent, pg.received, pg.hubTime)
	return skewFinding(skew, unc+pg.resolution)
}

// skewFinding judges a measured skew. The thresholds apply to the least
// the skew can be given the uncertainty, so a slow link alone never warns.
func skewFinding(skew, unc time.Duration) Finding {
	f := Finding{Check: "clock"}
	off := skew.Abs()
	least := off - unc
	pm := " (±" + shortDuration(unc).String() + ")"
	switch {
	case least <= skewWarn:
		f.Verdict = VerdictOK
		f.Detail = "this server's clock and the hub's agree to within " + shortDuration(off+unc).String()
		return f
	case skew > 0:
		f.Detail = "this server's clock is " + shortDuration(off).String() + " behind the hub's" + pm
	default:
		f.Detail = "this server's clock is " + shortDuration(off).String() + " ahead of the hub's" + pm
	}
	if least > skewFail {
		f.Verdict = VerdictFail
		f.Fix = "synchronise this server's clock (chrony or systemd-timesyncd; check with 'timedatectl' or 'chronyc tracking') from the same time source as the hub: receipt times, copy windows and certificates' validity depend on it; if this clock is right, the hub's is wrong"
	} else {
		f.Verdict = VerdictWarn
		f.Fix = "synchronise this server's clock with NTP (chrony or systemd-timesyncd; check with 'timedatectl') from the same time source as the hub: synchronised servers agree to milliseconds, and logs and receipt times of the two sides should line up"
	}
	return f
}

// Resource and subscription checks.

var errOpenTimeout = errors.New("no answer within " + doctorOpenTimeout.String())

// checkEntry opens a resource or subscription once, as 'qz-agent config
// check' does, and explains a failure.
func checkEntry(ctx context.Context, e Entry, source bool, file string) Finding {
	side := "subscription"
	if source {
		side = "resource"
	}
	f := Finding{Check: side + " " + e.ID}
	done := make(chan error, 1)
	go func() {
		log := slog.New(slog.DiscardHandler)
		if source {
			src, err := e.Source.OpenSource(log)
			if err == nil {
				src.Close()
			}
			done <- err
			return
		}
		sink, err := e.Sink.OpenSink(log)
		if err == nil {
			sink.Close()
		}
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(doctorOpenTimeout):
		err = errOpenTimeout // the open goes on, and closes what it opens
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		f.Verdict, f.Detail = VerdictOK, e.Kind+": opened and checked"
		return f
	}
	f.Verdict, f.Detail = VerdictFail, e.Kind+": "+err.Error()
	f.Fix = entryFix(side, e, file, err)
	return f
}

// entryFix says what to correct, and where, for an entry that cannot be
// opened.
func entryFix(side string, e Entry, file string, err error) string {
	where := fmt.Sprintf("%s %s in %s (line %d)", side, e.ID, file, e.node.Line)
	dsn := "the dsn of " + where
	dsnFile, inFile := entryValue(e, "dsn_file")
	if line, ok := entryKey(e, "dsn"); ok {
		dsn = fmt.Sprintf("the dsn of %s %s in %s (line %d)", side, e.ID, file, line)
	} else if inFile {
		dsn = fmt.Sprintf("the dsn in %s (dsn_file of %s)", dsnFile, where)
	}
	var (
		my  *mysql.MySQLError
		ora *network.OracleError
		op  *net.OpError
	)
	switch {
	case errors.As(err, &my) && my.Number == 1045, errors.As(err, &ora) && ora.ErrCode == 1017:
		return "check the user and password in " + dsn + "; the database refuses them"
	case errors.As(err, &my) && (my.Number == 1044 || my.Number == 1142 || my.Number == 1143):
		return "grant the user in " + dsn + " the rights it needs on the database (SELECT for a resource; also INSERT, UPDATE, DELETE and CREATE for a subscription)"
	case errors.As(err, &my) && my.Number == 1049:
		return "check the database name in " + dsn
	case errors.Is(err, errOpenTimeout), errors.As(err, &op):
		return "check the host and port in " + dsn + ", that the database server runs, and that the firewall lets this server reach it"
	case inFile && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)):
		return fmt.Sprintf("check dsn_file of %s: %s must exist and be readable by the agent's user (qianzhi)", where, dsnFile)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return "check the path of " + where + " and that the agent's user (qianzhi) may use it"
	}
	return "correct " + where + " as the message says; 'qz-agent config check' opens it the same way"
}

// entryKey finds a key of an entry as written in the file, and its line.
func entryKey(e Entry, key string) (int, bool) {
	for i := 0; i+1 < len(e.node.Content); i += 2 {
		if e.node.Content[i].Value == key {
			return e.node.Content[i].Line, true
		}
	}
	return 0, false
}

// entryValue is the scalar value of a key of an entry.
func entryValue(e Entry, key string) (string, bool) {
	for i := 0; i+1 < len(e.node.Content); i += 2 {
		if e.node.Content[i].Value == key {
			return e.node.Content[i+1].Value, true
		}
	}
	return "", false
}

// Disk checks.

// diskSpace is a filesystem's size and the space available to the agent.
type diskSpace struct {
	dir          string // the folder measured: the nearest that exists
	total, avail uint64
	dev          uint64
}

// statDisk measures the filesystem dir is (or will be) on.
func statDisk(dir string) (diskSpace, error) {
	for {
		fi, err := os.Stat(dir)
		if err == nil {
			var st syscall.Statfs_t
			if err := syscall.Statfs(dir, &st); err != nil {
				return diskSpace{}, fmt.Errorf("statfs %s: %w", dir, err)
			}
			d := diskSpace{dir: dir, total: st.Blocks * uint64(st.Bsize), avail: st.Bavail * uint64(st.Bsize)}
			if s, ok := fi.Sys().(*syscall.Stat_t); ok {
				d.dev = uint64(s.Dev)
			}
			return d, nil
		}
		if !errors.Is(err, fs.ErrNotExist) || filepath.Dir(dir) == dir {
			return diskSpace{}, err
		}
		dir = filepath.Dir(dir) // not created yet: measure where it will be
	}
}

// spoolUse is how much the spool holds against its quota.
type spoolUse struct {
	used, quota uint64
}

// diskFindings checks the filesystems of the state folder and the spool:
// one finding when they share one.
func diskFindings(cfg Config, file string) []Finding {
	need := 2*uint64(cfg.Batch.MaxBytes) + diskReserve
	var used uint64
	filepath.WalkDir(cfg.spoolDir(), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				used += uint64(fi.Size())
			}
		}
		return nil
	})
	spool := &spoolUse{used: used, quota: uint64(cfg.Spool.Quota)}
	state, serr := statDisk(cfg.StateDir)
	sp, perr := statDisk(cfg.spoolDir())
	failed := func(check string, err error) Finding {
		return Finding{Check: check, Verdict: VerdictFail, Detail: err.Error(), Fix: "check state_dir and spool.dir in " + file}
	}
	if serr == nil && perr == nil && state.dev == sp.dev {
		return []Finding{diskFinding("disk", "state_dir and spool", state, need, spool, file)}
	}
	var out []Finding
	if serr != nil {
		out = append(out, failed("disk state_dir", serr))
	} else {
		out = append(out, diskFinding("disk state_dir", "state_dir", state, need, nil, file))
	}
	if perr != nil {
		out = append(out, failed("disk spool", perr))
	} else {
		out = append(out, diskFinding("disk spool", "spool", sp, need, spool, file))
	}
	return out
}

// diskFinding judges the space on one filesystem. It fails when the agent
// cannot write the next batches and its state (need); it warns when the
// spool, filling up to its quota while the hub is away, would fill the disk
// first (spool is nil on a filesystem without the spool), or when less than
// a tenth of the disk is free.
func diskFinding(check, what string, d diskSpace, need uint64, spool *spoolUse, file string) Finding {
	f := Finding{Check: check}
	pct := 100.0
	if d.total > 0 {
		pct = float64(d.avail) * 100 / float64(d.total)
	}
	free := fmt.Sprintf("%s free of %s (%.0f%%) on %s (%s)", sizeText(d.avail), sizeText(d.total), pct, d.dir, what)
	keys := "state_dir"
	if spool != nil {
		keys = "state_dir or spool.dir"
	}
	move := fmt.Sprintf("free space on the filesystem of %s (old logs, packages, core dumps), or move %s in %s to a larger disk", d.dir, keys, file)
	switch {
	case d.avail < need:
		f.Verdict = VerdictFail
		f.Detail = fmt.Sprintf("nearly full: %s; the agent needs at least %s to write the next batches and its state database", free, sizeText(need))
		f.Fix = move
	case spool != nil && spool.used < spool.quota && d.avail < spool.quota-spool.used:
		f.Verdict = VerdictWarn
		f.Detail = fmt.Sprintf("%s: less than the spool may still take (spool.quota %s, %s in use); while the hub is away the spool fills the disk before its quota", free, sizeText(spool.quota), sizeText(spool.used))
		f.Fix = move
		if fit := spool.used + d.avail - need; fit >= 16<<20 {
			f.Fix += fmt.Sprintf(", or lower spool.quota in %s to at most %s", file, quotaText(fit))
		}
	case d.avail*10 < d.total:
		f.Verdict = VerdictWarn
		f.Detail = "filling up: " + free
		f.Fix = move
	default:
		f.Verdict, f.Detail = VerdictOK, free
		if spool != nil {
			f.Detail += fmt.Sprintf("; the spool holds %s of its %s quota", sizeText(spool.used), sizeText(spool.quota))
		}
	}
	return f
}

// sizeText writes a byte count for people: 1.5 GiB, 900 MiB, 12 KiB.
func sizeText(n uint64) string {
	v := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 || u == "TiB" {
			if v < 10 && u != "B" {
				return strconv.FormatFloat(v, 'f', 1, 64) + " " + u
			}
			return strconv.FormatFloat(v, 'f', 0, 64) + " " + u
		}
		v /= 1024
	}
	return ""
}

// quotaText writes a size for the config file, rounded down to a whole
// GiB or MiB: 12GiB, 900MiB.
func quotaText(n uint64) string {
	if n >= 1<<30 {
		return strconv.FormatUint(n>>30, 10) + "GiB"
	}
	return strconv.FormatUint(n>>20, 10) + "MiB"
}

// shortDuration rounds a duration to what a person reads: 1.2ms, 3.45s, 10m0s.
func shortDuration(d time.Duration) time.Duration {
	switch a := d.Abs(); {
	case a >= time.Minute:
		return d.Round(time.Second)
	case a >= time.Second:
		return d.Round(10 * time.Millisecond)
	case a >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
