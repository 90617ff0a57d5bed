package pki

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTokenRoundTrip(t *testing.T) {
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := NewToken(Fingerprint(ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseToken(" " + tok.String() + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got.Hash() != tok.Hash() || got.CAPin != tok.CAPin {
		t.Errorf("round trip changed the token: %+v vs %+v", got, tok)
	}
	s := tok.String()
	for name, bad := range map[string]string{
		"empty":         "",
		"wrong prefix":  "qz2" + s[3:],
		"cut secret":    strings.Replace(s, ".", ".x", 1)[:len(s)-10],
		"short pin":     s[:len(s)-2],
		"not hex pin":   s[:len(s)-2] + "zz",
		"missing parts": "qz1.abc",
	} {
		if _, err := ParseToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: ParseToken(%q) = %v, want ErrBadToken", name, bad, err)
		}
	}
}

func TestIssueNode(t *testing.T) {
	ca, _ := NewCA("test", time.Hour)
	key, _ := NewKey()
	csrPEM, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueNode(csr, "11510100MB0000000X", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "11510100MB0000000X" {
		t.Errorf("subject %q: the hub, not the request, names the node", cert.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("node certificate does not verify as a client: %v", err)
	}
	other, _ := NewCA("other", time.Hour)
	pool2 := x509.NewCertPool()
	pool2.AddCert(other.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool2, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("node certificate verifies against another CA")
	}
	srv, err := ca.IssueServer(key.Public(), []string{"127.0.0.1", "hub.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "hub.example"} {
		if err := srv.VerifyHostname(host); err != nil {
			t.Errorf("server certificate lacks %s: %v", host, err)
		}
	}
}

func TestIssued(t *testing.T) {
	ca, err := NewCA("test", time.Hour*24*365)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	der, _ := NewCSR(key)
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []time.Duration{time.Minute, 10 * time.Minute, 50 * time.Minute, time.Hour, 365 * 24 * time.Hour} {
		before := time.Now()
		c, err := ca.IssueNode(csr, "n1", v)
		if err != nil {
			t.Fatal(err)
		}
		// Certificates carry whole seconds.
		if got := Issued(c); got.Before(before.Add(-time.Second)) || got.After(time.Now().Add(time.Second)) {
			t.Errorf("validity %v: issued %v, want about %v", v, got, before)
		}
	}
}
