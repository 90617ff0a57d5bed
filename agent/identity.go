package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// Identity is the agent's enrolled identity: its TLS certificate and key,
// the hub's CA, and its seal key.
type Identity struct {
	NodeID string
	Cert   tls.Certificate
	Leaf   *x509.Certificate
	CA     *x509.Certificate
	Seal   *seal.PrivateKey

	dir string
	cur atomic.Pointer[tls.Certificate] // the newest certificate, once renewed
}

// current is the certificate to present: the renewed one, or the loaded one.
func (id *Identity) current() *tls.Certificate {
	if c := id.cur.Load(); c != nil {
		return c
	}
	return &id.Cert
}

// leaf is the current certificate, parsed.
func (id *Identity) leaf() *x509.Certificate { return id.current().Leaf }

// ErrNotEnrolled means the state dir holds no identity yet.
var ErrNotEnrolled = errors.New("this agent is not enrolled")

const (
	fileNodeKey  = "node.key"
	fileNodeCert = "node.crt"
	fileCA       = "ca.crt"
	fileSealKey  = "seal.key"
)

// LoadIdentity reads the identity from dir.
func LoadIdentity(dir string) (*Identity, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, fileNodeCert))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: run 'qz-agent enroll --hub HOST:PORT --token TOKEN' with the token from the hub operator", ErrNotEnrolled)
	}
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, fileNodeKey))
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate and key in %s do not match: %w", dir, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, fileCA))
	if err != nil {
		return nil, err
	}
	ca, err := pki.ParseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fileCA, err)
	}
	sb, err := os.ReadFile(filepath.Join(dir, fileSealKey))
	if err != nil {
		return nil, err
	}
	sk, err := seal.ParsePrivatePEM(sb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fileSealKey, err)
	}
	return &Identity{NodeID: cert.Leaf.Subject.CommonName, Cert: cert, Leaf: cert.Leaf, CA: ca, Seal: sk, dir: dir}, nil
}

// ClientTLS is the mutual-TLS configuration for talking to the hub at addr.
func (id *Identity) ClientTLS(addr string) *tls.Config {
	host, _, _ := net.SplitHostPort(addr)
	pool := x509.NewCertPool()
	pool.AddCert(id.CA)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Asked at each handshake, so new connections present a renewed
		// certificate without a restart.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return id.current(), nil },
		RootCAs:              pool,
		ServerName:           host,
	}
}

// pinnedTLS trusts the hub only if its chain includes the CA whose
// SHA-256 fingerprint is pin: how an agent trusts the hub before it has
// the CA certificate.
func pinnedTLS(addr, pin string) *tls.Config {
	host, _, _ := net.SplitHostPort(addr)
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates {
				sum := sha256.Sum256(c.Raw)
				if hex.EncodeToString(sum[:]) == pin {
					ca = c
				}
			}
			if ca == nil || len(cs.PeerCertificates) == 0 {
				return errors.New("hub's CA does not match the token's CA fingerprint: wrong hub address, or the token is from another hub")
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: host})
			return err
		},
	}
}

// Enroll creates the agent's keys, has the hub certify them with a one-time
// token, and stores the identity in dir. Keys are written before the hub is
// contacted, so a full disk fails before the token is spent; nothing is
// left behind on failure.
func Enroll(ctx context.Context, dir, hub, token, mode string, log *slog.Logger) (*Identity, error) {
	if _, err := os.Stat(filepath.Join(dir, fileNodeCert)); err == nil {
		return nil, fmt.Errorf("already enrolled (identity in %s); to enrol again, move that folder away first", dir)
	}
	tok, err := pki.ParseToken(token)
	if err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(hub); err != nil {
		return nil, fmt.Errorf("hub address %q: want host:port, e.g. 10.1.2.3:7443", hub)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create identity folder: %w", err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	sk, err := seal.Generate()
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.KeyPEM(key)
	if err != nil {
		return nil, err
	}
	staged := map[string][]byte{fileNodeKey: keyPEM, fileSealKey: sk.MarshalPEM()}
	var written []string
	cleanup := func() {
		for _, p := range written {
			os.Remove(p)
		}
	}
	stage := func(name string, data []byte, perm os.FileMode) error {
		p := filepath.Join(dir, name+".new")
		written = append(written, p)
		if err := fsutil.WriteFileAtomic(p, data, perm); err != nil {
			return fmt.Errorf("write %s: %w (is the disk full?)", p, err)
		}
		return nil
	}
	for _, name := range []string{fileNodeKey, fileSealKey} {
		if err := stage(name, staged[name], 0o600); err != nil {
			cleanup()
			return nil, err
		}
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		cleanup()
		return nil, err
	}
	sealPub, _ := sk.Public().MarshalText()
	resp, err := enrollRequest(ctx, hub, tok, mode, api.EnrollRequest{Token: token, CSR: string(csr), SealPub: string(sealPub)}, log)
	if err != nil {
		cleanup()
		return nil, err
	}
	cert, err := pki.ParseCertPEM([]byte(resp.Cert))
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("hub sent a bad certificate: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		cleanup()
		return nil, errors.New("hub certified another key; refusing it")
	}
	for name, data := range map[string][]byte{fileCA: []byte(resp.CA), fileNodeCert: []byte(resp.Cert)} {
		if err := stage(name, data, 0o644); err != nil {
			cleanup()
			return nil, fmt.Errorf("%w; the token is spent: ask the operator for a new one", err)
		}
	}
	// Move into place, the certificate last: its presence means enrolled.
	for _, name := range []string{fileNodeKey, fileSealKey, fileCA, fileNodeCert} {
		if err := os.Rename(filepath.Join(dir, name+".new"), filepath.Join(dir, name)); err != nil {
			cleanup()
			return nil, err
		}
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return nil, err
	}
	return LoadIdentity(dir)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func enrollRequest(ctx context.Context, hub string, tok pki.Token, mode string, req api.EnrollRequest, log *slog.Logger) (*api.EnrollResponse, error) {
	c := &transport.Client{Hub: hub, TLS: pinnedTLS(hub, tok.CAPin), Mode: mode, Logger: log}
	defer c.Close()
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL("/v1/enroll"), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("hub refused enrolment: %s", apiError(resp))
	}
	var out api.EnrollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("read enrolment answer: %w", err)
	}
	return &out, nil
}

// apiError extracts the hub's error message from a response.
func apiError(resp *http.Response) string {
	var e api.Error
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return resp.Status
}

// fileMaskKey holds the secret grants' keyed hashes derive from (see
// pkg/mask). It never leaves this server, and survives re-enrolment, so
// hashed values stay stable for the life of each grant.
const fileMaskKey = "mask.key"

// loadOrCreateMaskKey reads the mask key, creating it on first use.
func loadOrCreateMaskKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, fileMaskKey)
	if b, err := os.ReadFile(path); err == nil {
		if len(b) != 32 {
			return nil, fmt.Errorf("%s is damaged (%d bytes, want 32): restore it from a backup; masked hashes depend on it", path, len(b))
		}
		return b, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreateMaskKey(dir) // another process made it first
	}
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return key, f.Close()
}
