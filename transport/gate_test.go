package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/qianzhi/qianzhi/pkg/pki"
)

// testServer serves h on loopback (QUIC and TCP, one port) with a
// certificate from a new CA, and returns a client TLS config with and
// one without a client certificate.
func testServer(t *testing.T, h http.Handler, maxAnon int) (*Server, *tls.Config, *tls.Config) {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	sc, err := ca.IssueServer(key.Public(), []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ckey, _ := pki.NewKey()
	pem, _ := pki.NewCSR(ckey)
	csr, _ := pki.ParseCSR(pem)
	cc, err := ca.IssueNode(csr, "node-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srv := &Server{Handler: h, MaxAnonymous: maxAnon, TLS: &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{sc.Raw}, PrivateKey: key}},
		ClientCAs:    pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}}
	if err := srv.Listen("127.0.0.1:0", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	anon := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	node := anon.Clone()
	node.Certificates = []tls.Certificate{{Certificate: [][]byte{cc.Raw}, PrivateKey: ckey}}
	return srv, anon, node
}

// client is one connection's worth of HTTP client over a transport.
func client(mode string, tc *tls.Config) (*http.Client, func()) {
	if mode == QUIC {
		t := &http3.Transport{TLSClientConfig: tc, QUICConfig: quicConfig()}
		return &http.Client{Transport: t, Timeout: 5 * time.Second}, func() { t.Close() }
	}
	t := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	p := new(http.Protocols)
	p.SetHTTP2(true)
	t.Protocols = p
	return &http.Client{Transport: t, Timeout: 5 * time.Second}, t.CloseIdleConnections
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAnonymousCap: connections without a client certificate are capped
// on both transports; connections with one are not counted, and a closed
// one frees its place.
func TestAnonymousCap(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	srv, anon, node := testServer(t, mux, 2)
	for _, mode := range []string{QUIC, TCP} {
		t.Run(mode, func(t *testing.T) {
			url := "https://" + srv.TCPAddr() + "/v1/ping"
			get := func(c *http.Client) error {
				resp, err := c.Get(url)
				if err == nil {
					resp.Body.Close()
				}
				return err
			}
			var closers []func()
			defer func() {
				for _, c := range closers {
					c()
				}
			}()
			for i := range 2 {
				c, closer := client(mode, anon)
				closers = append(closers, closer)
				if err := get(c); err != nil {
					t.Fatalf("anonymous connection %d under the cap: %v", i+1, err)
				}
			}
			waitFor(t, "two anonymous connections counted", func() bool { return srv.Anonymous() == 2 })
			third, closeThird := client(mode, anon)
			defer closeThird()
			if err := get(third); err == nil {
				t.Error("a third anonymous connection was served past a cap of 2")
			}
			withCert, closeCert := client(mode, node)
			defer closeCert()
			if err := get(withCert); err != nil {
				t.Errorf("a connection with a client certificate, anonymous ones at the cap: %v", err)
			}
			closers[0]()
			waitFor(t, "a closed anonymous connection released", func() bool { return srv.Anonymous() == 1 })
			again, closeAgain := client(mode, anon)
			defer closeAgain()
			if err := get(again); err != nil {
				t.Errorf("anonymous connection after one closed: %v", err)
			}
			for _, c := range closers[1:] {
				c()
			}
			closeAgain()
			closers = nil
			waitFor(t, "all anonymous connections released", func() bool { return srv.Anonymous() == 0 })
		})
	}
}

// TestBodyDeadline: a request body that stalls ends with an error in the
// handler; one that keeps moving goes on past the deadline.
func TestBodyDeadline(t *testing.T) {
	got := make(chan error, 1)
	h := bodyDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		got <- err
	}), 300*time.Millisecond)
	srv, _, node := testServer(t, h, 0)
	for _, mode := range []string{QUIC, TCP} {
		t.Run(mode, func(t *testing.T) {
			c, closer := client(mode, node)
			defer closer()
			url := "https://" + srv.TCPAddr() + "/upload"
			// Moving: a byte every 100 ms for a second, three deadlines long.
			pr, pw := io.Pipe()
			go func() {
				for range 10 {
					pw.Write([]byte("x"))
					time.Sleep(100 * time.Millisecond)
				}
				pw.Close()
			}()
			req, _ := http.NewRequest(http.MethodPut, url, pr)
			req.ContentLength = 10
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
			if err := <-got; err != nil {
				t.Errorf("a body that kept moving: %v", err)
			}
			// Stalled: one byte, then nothing.
			pr, pw = io.Pipe()
			go func() { pw.Write([]byte("x")) }()
			defer pw.Close()
			req, _ = http.NewRequest(http.MethodPut, url, io.MultiReader(bytes.NewReader(nil), pr))
			req.ContentLength = 10
			go func() {
				if resp, err := c.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			select {
			case err := <-got:
				if err == nil {
					t.Error("a stalled body read to its end")
				}
			case <-time.After(5 * time.Second):
				t.Error("a stalled body was still being read after 5 s; its deadline was 300 ms")
			}
		})
	}
}
