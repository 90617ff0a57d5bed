package central

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

// The admin socket: while the hub runs, qz-central commands on the hub host
// are carried to it over a Unix socket in the state folder (mode 0600), and
// the hub runs them on its own store. The socket's peer credentials name
// who asked, so the audit log records "local:USER" rather than a shared
// "operator".

func (c *Config) adminSock() string { return filepath.Join(c.StateDir, "admin.sock") }

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
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
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
		var op *net.OpError
		if errors.As(err, &op) {
			return false, nil // a stale socket: no hub runs
		}
		return true, err
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
	os.Remove(sock) // a socket left by a hub that died
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

// peerUser names the user at the other end of a Unix socket connection.
func peerUser(c net.Conn) string {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "unknown"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unknown"
	}
	who := "unknown"
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			who = userName(int(cred.Uid))
		}
	})
	return who
}

func (h *Hub) adminRun(w http.ResponseWriter, r *http.Request) {
	var req adminRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Args) == 0 {
		httpError(w, http.StatusBadRequest, "malformed admin request")
		return
	}
	actor := "local:" + peerUser(r.Context().Value(connKey{}).(net.Conn))
	cmd, rest := splitCommand(req.Args)
	var out adminResponse
	var stdout, stderr bytes.Buffer
	o, pos, err := parseFlags(cmd, rest)
	if err == nil {
		switch cmd {
		case "init", "run", "config check", "calendar", "version":
			err = cli.Usagef("%s runs on its own, not through the hub", cmd)
		default:
			err = admin(store.WithActor(r.Context(), actor), h.cfg, h.store, cmd, pos, o, &stdout, &stderr)
		}
	}
	out.Stdout, out.Stderr = stdout.String(), stderr.String()
	if err != nil {
		out.Error = err.Error()
		if errors.Is(err, cli.ErrUsage) {
			out.Error, out.Usage = strings.TrimPrefix(out.Error, cli.ErrUsage.Error()+": "), true
		}
	}
	writeJSON(w, out)
}
