// Package pki is the hub's small certificate authority: it creates the CA and
// the hub's server certificate, signs the certificate requests agents send at
// enrolment, and makes and checks one-time enrolment tokens.
//
// Node certificates name the node in their subject's common name; the hub's
// TLS configuration checks that name against its node table at every
// handshake, which is how revocation takes effect immediately.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/fsutil"
)

// NodeOU is the organisational unit of every node certificate.
const NodeOU = "qianzhi-node"

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewKey makes a P-256 ECDSA key, the default for TLS identities.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

// NewCA creates a self-signed CA valid for the given duration.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Qianzhi"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IssueServer signs a server certificate for the hub, valid for the given
// host names and IP addresses.
func (ca *CA) IssueServer(pub crypto.PublicKey, hosts []string, validity time.Duration) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: "qz-central", Organization: []string{"Qianzhi"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.sign(tmpl, pub)
}

// IssueNode signs a node's certificate request. The subject comes from the
// hub's record of the node, never from the request, so an agent cannot name
// itself.
func (ca *CA) IssueNode(csr *x509.CertificateRequest, nodeID string, validity time.Duration) (*x509.Certificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: nodeID, OrganizationalUnit: []string{NodeOU}, Organization: []string{"Qianzhi"}},
		NotBefore:    now.Add(-backdate(validity)),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.sign(tmpl, csr.PublicKey)
}

// backdate is how far before its issue a node certificate is valid: for
// clocks a little behind the hub's, by no more than a tenth of its life
// (the agent renews at a third of it left).
func backdate(validity time.Duration) time.Duration { return min(5*time.Minute, validity/10) }

// Issued is when a node certificate was issued (its NotBefore undoes the
// backdate of IssueNode).
func Issued(c *x509.Certificate) time.Time {
	// life = validity + backdate(validity); backdate is life/11 when it is
	// a tenth of the validity, and 5 minutes otherwise.
	return c.NotBefore.Add(min(5*time.Minute, c.NotAfter.Sub(c.NotBefore)/11))
}

// OperatorOU marks an operator's certificate, OperatorRolePrefix its role.
const (
	OperatorOU         = "qianzhi-operator"
	OperatorRolePrefix = "role:"
)

// IssueOperator certifies a hub operator's key: the name, and the role
// (operator or reviewer) in the subject.
func (ca *CA) IssueOperator(pub crypto.PublicKey, name, role string, validity time.Duration) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{OperatorOU, OperatorRolePrefix + role}, Organization: []string{"Qianzhi"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.sign(tmpl, pub)
}

// IsOperator reports whether a certificate is an operator's.
func IsOperator(c *x509.Certificate) bool {
	return slices.Contains(c.Subject.OrganizationalUnit, OperatorOU)
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// NewCSR makes a certificate request for key; the hub ignores its subject.
func NewCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "qz-agent"},
	}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCSR parses a PEM certificate request.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("not a PEM certificate request")
	}
	return x509.ParseCertificateRequest(blk.Bytes)
}

// CertPEM encodes a certificate as PEM.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// KeyPEM encodes a private key as PKCS#8 PEM.
func KeyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM parses the first certificate in a PEM bundle.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// ParseKeyPEM parses a PKCS#8 PEM private key.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	return s, nil
}

// LoadCA reads a CA certificate and key from PEM files.
func LoadCA(certPath, keyPath string) (*CA, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	cert, err := ParseCertPEM(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := ParseKeyPEM(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// SaveKey writes a private key as PEM with owner-only permissions.
func SaveKey(path string, k crypto.Signer) error {
	b, err := KeyPEM(k)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, b, 0o600)
}

// SaveCert writes a certificate as PEM.
func SaveCert(path string, c *x509.Certificate) error {
	return fsutil.WriteFileAtomic(path, CertPEM(c), 0o644)
}

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER bytes.
func Fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// Token is a one-time enrolment token: a random secret and the fingerprint
// of the hub's CA, so that the agent can trust the hub on first contact
// without any other file.
type Token struct {
	Secret []byte
	CAPin  string // hex SHA-256 of the CA certificate
}

const tokenPrefix = "qz1"

// NewToken makes a token with a fresh 16-byte secret.
func NewToken(caPin string) (Token, error) {
	s := make([]byte, 16)
	if _, err := rand.Read(s); err != nil {
		return Token{}, err
	}
	return Token{Secret: s, CAPin: caPin}, nil
}

// String renders the token as "qz1.<secret>.<ca pin>".
func (t Token) String() string {
	return tokenPrefix + "." + base64.RawURLEncoding.EncodeToString(t.Secret) + "." + t.CAPin
}

// Hash is what the hub stores instead of the secret.
func (t Token) Hash() string {
	s := sha256.Sum256(t.Secret)
	return hex.EncodeToString(s[:])
}

// ErrBadToken means the text is not an enrolment token at all.
var ErrBadToken = errors.New("malformed enrolment token")

// ParseToken parses a token string.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 || parts[0] != tokenPrefix {
		return Token{}, fmt.Errorf("%w: expected qz1.<secret>.<ca pin> as printed by 'qz-central node add'", ErrBadToken)
	}
	sec, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || len(sec) != 16 {
		return Token{}, fmt.Errorf("%w: secret part is damaged; copy the whole token again", ErrBadToken)
	}
	if b, err := hex.DecodeString(parts[2]); err != nil || len(b) != sha256.Size {
		return Token{}, fmt.Errorf("%w: CA pin part is damaged; copy the whole token again", ErrBadToken)
	}
	return Token{Secret: sec, CAPin: parts[2]}, nil
}
