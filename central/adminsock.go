package central

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/cli"
	"github.com/qianzhi/qianzhi/pkg/pki"
)

// The admin socket: while the hub runs, qz-central commands on the hub host
// are carried to it over a Unix socket in the state folder (admin/, 0700), and
// the hub runs them on its own store. The socket's peer credentials name
// who asked, so the audit log records "local:USER" rather than a shared
// "operator".

func (c *Config) adminSock() string { return filepath.Join(c.StateDir, "admin", "admin.sock") }

type adminRequest struct {
	Args []string `json:"args"`
}

type adminResponse struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Error  string `json:"error,omitempty"`
	Usage  bool   `json:"usage,omitempty"`
}

// viaSocket sends a command to the running hub. It reports false when no
// hub answers on the socket, so the caller runs the command itself.
func viaSocket(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) (bool, error) {
	sock := cfg.adminSock()
	if _, err := os.Stat(sock); err != nil {
		return false, nil
	}
	conn, err := net.Dial("unix", sock)
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return false, nil // a socket left by a hub that stopped
	}
	if err != nil {
		return true, fmt.Errorf("admin socket %s: %w (run qz-central as the hub's user, or as root)", sock, err)
	}
	used := false
	c := &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		if !used {
			used = true
			return conn, nil
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	// Flags are the hub's to read; the config file is already its own.
	var fwd []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--config" || a == "-config":
			i++
		case len(a) > 8 && (a[:9] == "--config=" || a[:8] == "-config="):
		default:
			fwd = append(fwd, a)
		}
	}
	body, _ := json.Marshal(adminRequest{Args: fwd})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://hub/admin/v1/run", bytes.NewReader(body))
	if err != nil {
		return true, err
	}
	resp, err := c.Do(req)
	if err != nil {
		// Not run again directly: the hub may have done it already.
		return true, fmt.Errorf("admin socket %s: %w", sock, err)
	}
	defer resp.Body.Close()
	var out adminResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return true, fmt.Errorf("admin socket %s: %w", sock, err)
	}
	io.WriteString(stdout, out.Stdout)
	io.WriteString(stderr, out.Stderr)
	switch {
	case out.Usage:
		return true, cli.Usagef("%s", out.Error)
	case out.Error != "":
		return true, errors.New(out.Error)
	}
	return true, nil
}

// localActor names the user running a command on the hub host.
func localActor() string {
	return "local:" + userName(os.Getuid())
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return "uid" + strconv.Itoa(uid)
}

type connKey struct{}

// serveAdmin answers commands on the admin socket until ctx ends.
func (h *Hub) serveAdmin(ctx context.Context) error {
	sock := h.cfg.adminSock()
	// The folder, not just the socket, keeps others out: the socket file
	// exists, with the umask's mode, before it can be chmod'ed.
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Dir(sock), 0o700); err != nil {
		return err
	}
	if fi, err := os.Lstat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(sock) // a socket left by a hub that died
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admin/v1/run", h.adminRun)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) }}
	go func() {
		<-ctx.Done()
		srv.Close()
		os.Remove(sock)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (h *Hub) adminRun(w http.ResponseWriter, r *http.Request) {
	var req adminRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Args) == 0 {
		httpError(w, http.StatusBadRequest, "malformed admin request")
		return
	}
	who, err := peerUser(r.Context().Value(connKey{}).(net.Conn))
	if err != nil {
		httpError(w, http.StatusForbidden, "cannot tell who is asking: "+err.Error())
		return
	}
	writeJSON(w, h.adminExec(r.Context(), "local:"+who, roleHost, req.Args))
}

// remoteAdmin runs a command for an operator holding an operator
// certificate, if its role allows the command.
func (h *Hub) remoteAdmin(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !pki.IsOperator(r.TLS.PeerCertificates[0]) {
		httpError(w, http.StatusUnauthorized, "an operator certificate is required (qz-central operator add, on the hub host)")
		return
	}
	c := r.TLS.PeerCertificates[0]
	op, err := h.store.OperatorFor(r.Context(), c.Subject.CommonName, c.SerialNumber.Text(16))
	if err != nil {
		httpError(w, http.StatusForbidden, "this operator certificate is revoked or superseded")
		return
	}
	var req adminRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Args) == 0 {
		httpError(w, http.StatusBadRequest, "malformed admin request")
		return
	}
	writeJSON(w, h.adminExec(r.Context(), "operator:"+op.Name, op.Role, req.Args))
}

// reviewOnly are the commands of the reviewer role alone; viewOnly are open
// to both roles. Everything else is the operator role's.
var (
	reviewOnly = []string{"catalog approve", "catalog reject", "application approve", "application reject"}
	viewOnly   = []string{"catalog list", "catalog show", "application list", "application show", "report overdue", "report departments",
		"audit list", "audit verify", "audit export", "grant list", "batch list", "copy list", "calls", "node list", "operator list", "status"}
)

// roleHost is the hub host's own user, at the admin socket: every command.
const roleHost = "host"

// hostOnly are commands only the hub host's user may run: operators are
// managed where their certificates are made.
var hostOnly = []string{"operator revoke", "audit accept-cut"}

// allowed reports whether a role may run a command.
func allowed(role, cmd string) bool {
	switch {
	case role == roleHost:
		return true
	case role != store.RoleOperator && role != store.RoleReviewer, slices.Contains(hostOnly, cmd):
		return false
	case slices.Contains(viewOnly, cmd):
		return true
	case slices.Contains(reviewOnly, cmd):
		return role == store.RoleReviewer
	}
	return role == store.RoleOperator
}

// adminExec runs one admin command for actor with role.
func (h *Hub) adminExec(ctx context.Context, actor, role string, args []string) adminResponse {
	cmd, rest := splitCommand(args)
	var out adminResponse
	var stdout, stderr bytes.Buffer
	o, pos, err := parseFlags(cmd, rest)
	if err == nil {
		switch {
		case slices.Contains([]string{"init", "run", "config check", "calendar", "version", "operator add", "backup", "restore"}, cmd):
			err = cli.Usagef("%s runs on the hub host on its own, not through the hub", cmd)
		case readsHostFolder(cmd, o):
			err = cli.Usagef("%s reads or writes a folder named on its command line: run it on the hub host, not through the hub", cmd)
		case !allowed(role, cmd):
			who := map[bool]string{true: "hub " + store.RoleReviewer, false: "hub " + store.RoleOperator}[slices.Contains(reviewOnly, cmd)]
			if slices.Contains(hostOnly, cmd) {
				who = "the hub host's administrator"
			}
			err = fmt.Errorf("role %s may not run %q: ask a %s", role, cmd, who)
			h.store.Audit(ctx, actor, "admin.refuse", cmd, err.Error())
		default:
			err = admin(store.WithActor(ctx, actor), h.cfg, h.store, cmd, pos, o, &stdout, &stderr)
			// A revocation run here takes effect now, not at watchGrants'
			// next look: what the hub keeps in memory of nodes and
			// grants is dropped with the generation.
			h.changed()
		}
	}
	out.Stdout, out.Stderr = stdout.String(), stderr.String()
	if err != nil {
		out.Error = err.Error()
		if errors.Is(err, cli.ErrUsage) {
			out.Error, out.Usage = strings.TrimPrefix(out.Error, cli.ErrUsage.Error()+": "), true
		}
	}
	return out
}

// Files of an operator's folder.
const (
	fileOperatorKey  = "operator.key"
	fileOperatorCert = "operator.crt"
	fileOperatorCA   = "ca.crt"
)

// operatorAdd makes a key and certificate for a person who will run admin
// commands from elsewhere, in a new folder to hand over (its key is the
// person's identity: hand it over as securely as a password).
func operatorAdd(ctx context.Context, cfg Config, pos []string, o *opts, stdout io.Writer) error {
	if err := cli.Want(pos, 1, "qz-central operator add NAME --role operator|reviewer --out DIR"); err != nil {
		return err
	}
	if err := validID(pos[0]); err != nil {
		return err
	}
	if o.role != store.RoleOperator && o.role != store.RoleReviewer {
		return cli.Usagef("--role %q: use operator (nodes, grants) or reviewer (catalog and application review)", o.role)
	}
	if o.out == "" {
		return cli.Usagef("--out DIR is required: the folder to write the operator's key and certificate to")
	}
	ca, err := pki.LoadCA(cfg.caCert(), cfg.caKey())
	if err != nil {
		return fmt.Errorf("load the hub's CA (run this on the hub host): %w", err)
	}
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	ops, err := st.Operators(ctx)
	if err != nil {
		return err
	}
	for _, op := range ops {
		if op.Name == pos[0] && !o.replace {
			return cli.Usagef("operator %s exists already (role %s): give --replace to issue a new certificate, which ends the old one", op.Name, op.Role)
		}
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	cert, err := ca.IssueOperator(key.Public(), pos[0], o.role, cfg.CertValidity)
	if err != nil {
		return err
	}
	if err := os.Mkdir(o.out, 0o700); err != nil {
		return fmt.Errorf("--out %s: %w (give a new folder)", o.out, err)
	}
	if err := pki.SaveKey(filepath.Join(o.out, fileOperatorKey), key); err != nil {
		return err
	}
	if err := pki.SaveCert(filepath.Join(o.out, fileOperatorCert), cert); err != nil {
		return err
	}
	if err := pki.SaveCert(filepath.Join(o.out, fileOperatorCA), ca.Cert); err != nil {
		return err
	}
	if err := st.AddOperator(ctx, pos[0], o.role, cert.SerialNumber.Text(16)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "operator %s (%s): key and certificate in %s; from another machine:\n  qz-central --remote HUB:PORT --operator %s catalog list\n", pos[0], o.role, o.out, o.out)
	return nil
}

// viaRemote runs a command on a hub elsewhere, over TLS with an operator
// certificate.
func viaRemote(ctx context.Context, o *opts, args []string, stdout, stderr io.Writer) error {
	if o.operator == "" {
		return cli.Usagef("--remote needs --operator DIR: the folder qz-central operator add wrote")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(o.operator, fileOperatorCert), filepath.Join(o.operator, fileOperatorKey))
	if err != nil {
		return fmt.Errorf("operator folder %s: %w", o.operator, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(o.operator, fileOperatorCA))
	if err != nil {
		return fmt.Errorf("operator folder %s: %w", o.operator, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	host, _, err := net.SplitHostPort(o.remote)
	if err != nil {
		return cli.Usagef("--remote %q: want HOST:PORT", o.remote)
	}
	c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: host}}}
	var fwd []string
	skip := map[string]bool{"--remote": true, "-remote": true, "--operator": true, "-operator": true, "--config": true, "-config": true}
	for i := 0; i < len(args); i++ {
		if skip[args[i]] {
			i++
			continue
		}
		if k, _, ok := strings.Cut(args[i], "="); ok && skip[k] {
			continue
		}
		fwd = append(fwd, args[i])
	}
	body, _ := json.Marshal(adminRequest{Args: fwd})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+o.remote+"/admin/v1/run", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		// TLS 1.3 refuses a client certificate after the client thinks
		// the handshake is done: the error seen here is a reset pipe.
		return fmt.Errorf("hub %s refused the connection or cannot be reached (check --remote, and that operator %s is not revoked): %w",
			o.remote, cert.Leaf.Subject.CommonName, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("hub %s refused: %s", o.remote, strings.TrimSpace(string(raw)))
	}
	var out adminResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("hub %s: %w", o.remote, err)
	}
	io.WriteString(stdout, out.Stdout)
	io.WriteString(stderr, out.Stderr)
	switch {
	case out.Usage:
		return cli.Usagef("%s", out.Error)
	case out.Error != "":
		return errors.New(out.Error)
	}
	return nil
}
