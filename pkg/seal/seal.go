// Package seal holds a node's signing key, its "electronic seal": an Ed25519
// key pair with which a provider seals batches and a consumer signs receipts.
//
// Every signature is domain-separated: the signed message is the domain name,
// a NUL byte, then the message, so a signature made for one purpose (a batch)
// can never be replayed as another (a receipt).
package seal

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// AlgEd25519 is the algorithm name of Ed25519 seals, as written in batch
// headers, receipts and the text form of public keys.
const AlgEd25519 = "ed25519"

// ErrBadSignature is returned (possibly wrapped) when a signature does not
// verify under the given key and domain.
var ErrBadSignature = errors.New("seal: signature does not verify")

const pemTypePrivate = "PRIVATE KEY"

// PrivateKey is a node's Ed25519 signing key. The zero value is not usable;
// obtain one from Generate, ParsePrivatePEM or LoadOrCreate.
type PrivateKey struct {
	key ed25519.PrivateKey
}

// Generate creates a new random key.
func Generate() (*PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal: generate key: %w", err)
	}
	return &PrivateKey{key: priv}, nil
}

// Public returns the public half of k.
func (k *PrivateKey) Public() PublicKey {
	var p PublicKey
	copy(p.raw[:], k.key.Public().(ed25519.PublicKey))
	p.set = true
	return p
}

// Algorithm returns AlgEd25519.
func (k *PrivateKey) Algorithm() string { return AlgEd25519 }

// KeyID returns the ID of the public key, see PublicKey.KeyID.
func (k *PrivateKey) KeyID() string { return k.Public().KeyID() }

// Sign signs msg under domain: the signed bytes are domain + "\x00" + msg.
// domain names a purpose such as "qianzhi-batch-v1"; it must be non-empty and
// must not contain NUL, and Sign panics otherwise because that is a
// programming error that would make signatures ambiguous.
func (k *PrivateKey) Sign(domain string, msg []byte) []byte {
	return ed25519.Sign(k.key, signedBytes(domain, msg))
}

// MarshalPEM encodes k as a PKCS#8 PEM block of type "PRIVATE KEY", the form
// openssl reads.
func (k *PrivateKey) MarshalPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k.key)
	if err != nil {
		// Cannot happen for a well-formed ed25519 key.
		panic("seal: marshal PKCS#8: " + err.Error())
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTypePrivate, Bytes: der})
}

// ParsePrivatePEM decodes a PKCS#8 PEM "PRIVATE KEY" block holding an
// Ed25519 key, as written by MarshalPEM or `openssl genpkey -algorithm ed25519`.
func ParsePrivatePEM(b []byte) (*PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("seal: parse private key: no PEM block found")
	}
	if block.Type != pemTypePrivate {
		return nil, fmt.Errorf("seal: parse private key: PEM type %q, want %q", block.Type, pemTypePrivate)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("seal: parse private key: %w", err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("seal: parse private key: %T is not an ed25519 key", key)
	}
	return &PrivateKey{key: priv}, nil
}

// LoadOrCreate reads the key at path, or, when no file exists there, creates
// a new key and stores it with mode 0600 (creating the folder with mode 0700
// if needed). The file appears atomically and is never overwritten, so two
// processes racing to create it end up with the same key. An existing key
// file that group or others may access is refused, as ssh does.
func LoadOrCreate(path string) (*PrivateKey, error) {
	k, err := load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	k, err = Generate()
	if err != nil {
		return nil, err
	}
	if err := createExclusive(path, k.MarshalPEM()); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return load(path)
		}
		return nil, fmt.Errorf("seal: create key %s: %w", path, err)
	}
	return k, nil
}

func load(path string) (*PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("seal: load key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal: load key: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("seal: key file %s has mode %04o, readable beyond its owner; run chmod 600", path, perm)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("seal: load key %s: %w", path, err)
	}
	k, err := ParsePrivatePEM(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return k, nil
}

// createExclusive writes data to a temporary file beside path, fsyncs it and
// hard-links it into place, which fails with fs.ErrExist instead of
// replacing a key another process created meanwhile. Where hard links are not
// supported it falls back to rename.
func createExclusive(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		f.Close()
		os.Remove(tmp)
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return fsutil.SyncDir(dir)
}

// PublicKey is a node's public seal key. The zero value holds no key: it
// verifies nothing and has an empty KeyID. PublicKey values are comparable
// with == and usable as map keys.
type PublicKey struct {
	raw [ed25519.PublicKeySize]byte
	set bool
}

// PublicFromBytes returns the public key with the given raw 32-byte Ed25519
// encoding.
func PublicFromBytes(raw []byte) (PublicKey, error) {
	var p PublicKey
	if len(raw) != ed25519.PublicKeySize {
		return p, fmt.Errorf("seal: ed25519 public key is %d bytes, want %d", len(raw), ed25519.PublicKeySize)
	}
	copy(p.raw[:], raw)
	p.set = true
	return p, nil
}

// IsZero reports whether p holds no key.
func (p PublicKey) IsZero() bool { return !p.set }

// Bytes returns the raw 32-byte key, or nil for the zero PublicKey.
func (p PublicKey) Bytes() []byte {
	if !p.set {
		return nil
	}
	return bytes.Clone(p.raw[:])
}

// Algorithm returns AlgEd25519, or "" for the zero PublicKey.
func (p PublicKey) Algorithm() string {
	if !p.set {
		return ""
	}
	return AlgEd25519
}

// KeyID returns the key's short stable name: the lowercase hex of the first
// 16 bytes of the SHA-256 of the raw public key. Batch headers and receipts
// name their sealing key by it. The zero PublicKey has KeyID "".
func (p PublicKey) KeyID() string {
	if !p.set {
		return ""
	}
	sum := sha256.Sum256(p.raw[:])
	return hex.EncodeToString(sum[:16])
}

// Verify checks that sig is p's signature of msg under domain (see
// PrivateKey.Sign). It returns an error wrapping ErrBadSignature if not.
func (p PublicKey) Verify(domain string, msg, sig []byte) error {
	if !p.set {
		return fmt.Errorf("%w: no public key", ErrBadSignature)
	}
	if domain == "" || strings.IndexByte(domain, 0) >= 0 {
		return fmt.Errorf("%w: invalid domain %q", ErrBadSignature, domain)
	}
	if !ed25519.Verify(p.raw[:], signedBytes(domain, msg), sig) {
		return ErrBadSignature
	}
	return nil
}

// MarshalText encodes p as "ed25519:" followed by the standard base64 of the
// raw key. The zero PublicKey cannot be marshaled.
func (p PublicKey) MarshalText() ([]byte, error) {
	if !p.set {
		return nil, errors.New("seal: marshal empty public key")
	}
	return []byte(AlgEd25519 + ":" + base64.StdEncoding.EncodeToString(p.raw[:])), nil
}

// String returns the text form of p, or "<none>" for the zero PublicKey.
func (p PublicKey) String() string {
	b, err := p.MarshalText()
	if err != nil {
		return "<none>"
	}
	return string(b)
}

// UnmarshalText decodes the form written by MarshalText.
func (p *PublicKey) UnmarshalText(b []byte) error {
	alg, enc, ok := strings.Cut(string(b), ":")
	if !ok {
		return fmt.Errorf("seal: public key %q: want \"<alg>:<base64 key>\"", truncate(string(b)))
	}
	if alg != AlgEd25519 {
		return fmt.Errorf("seal: public key algorithm %q not supported, want %q", truncate(alg), AlgEd25519)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(enc)
	if err != nil {
		return fmt.Errorf("seal: public key: bad base64: %w", err)
	}
	q, err := PublicFromBytes(raw)
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// ParsePublic decodes a public key in the text form written by MarshalText,
// such as "ed25519:Zm9v…".
func ParsePublic(s string) (PublicKey, error) {
	var p PublicKey
	err := p.UnmarshalText([]byte(s))
	return p, err
}

func signedBytes(domain string, msg []byte) []byte {
	if domain == "" || strings.IndexByte(domain, 0) >= 0 {
		panic(fmt.Sprintf("seal: invalid signing domain %q", domain))
	}
	b := make([]byte, 0, len(domain)+1+len(msg))
	b = append(b, domain...)
	b = append(b, 0)
	return append(b, msg...)
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
