// Package anchor signs and checks the hub's audit checkpoints: statements,
// signed with the key of the hub's CA, that the hub's audit log held Seq
// records ending in the hash Head at a time. Agents keep the checkpoints
// they receive, so records later cut from the end of the log, or rewritten
// and re-hashed, disagree with a copy the hub no longer controls.
//
// The CA key signs because it is the one key of the hub that every agent
// already trusts without asking the hub: the agent pinned the CA's
// fingerprint from its enrolment token. A checkpoint names that fingerprint
// as the hub's identity. The signature is domain-separated (the signed
// bytes are Domain, a NUL byte, then the checkpoint's canonical JSON), so
// nothing else the CA signs can pass for a checkpoint.
package anchor

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/qianzhi/qianzhi/pkg/pki"
)

// Domain is the signing domain of audit checkpoints.
const Domain = "qianzhi-audit-checkpoint-v1"

// Version is the checkpoint format version written and accepted.
const Version = 1

// Errors of Verify, matched with errors.Is.
var (
	// ErrForged: the signature does not verify under the CA, or the
	// checkpoint is malformed: it was not made by this hub as it reads.
	ErrForged = errors.New("audit checkpoint: not signed by this hub")
	// ErrOtherHub: the checkpoint names another hub's CA.
	ErrOtherHub = errors.New("audit checkpoint: signed for another hub")
)

// Checkpoint is the hub's signed statement of its audit log's head.
type Checkpoint struct {
	Version int `json:"version"`
	// Hub is the lowercase hex SHA-256 of the hub's CA certificate, the
	// fingerprint agents pinned at enrolment.
	Hub string `json:"hub"`
	// Seq is the number of the last audit record, Head its chain hash.
	Seq  int64     `json:"seq"`
	Head string    `json:"head"`
	At   time.Time `json:"at"`
	// Alg is the x509 name of the signature algorithm, e.g. ECDSA-SHA256.
	Alg       string `json:"alg"`
	Signature []byte `json:"signature"`
}

// signed returns the bytes the signature covers.
func (c Checkpoint) signed() ([]byte, error) {
	c.Signature = nil
	msg, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte(Domain+"\x00"), msg...), nil
}

// algorithm is the x509 signature algorithm a CA key of this type signs
// with here.
func algorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256, nil
	case ed25519.PublicKey:
		return x509.PureEd25519, nil
	}
	return x509.UnknownSignatureAlgorithm, fmt.Errorf("audit checkpoint: a CA key of type %T cannot sign checkpoints", pub)
}

// Sign makes the checkpoint of a log whose last record is seq with hash
// head, signed with the CA's key.
func Sign(ca *pki.CA, seq int64, head string, at time.Time) (Checkpoint, error) {
	alg, err := algorithm(ca.Key.Public())
	if err != nil {
		return Checkpoint{}, err
	}
	c := Checkpoint{Version: Version, Hub: pki.Fingerprint(ca.Cert), Seq: seq, Head: head, At: at.UTC(), Alg: alg.String()}
	msg, err := c.signed()
	if err != nil {
		return Checkpoint{}, err
	}
	var digest []byte
	opts := crypto.Hash(0) // Ed25519 signs the message itself
	if alg == x509.ECDSAWithSHA256 {
		sum := sha256.Sum256(msg)
		digest, opts = sum[:], crypto.SHA256
	} else {
		digest = msg
	}
	if c.Signature, err = ca.Key.Sign(rand.Reader, digest, opts); err != nil {
		return Checkpoint{}, fmt.Errorf("sign audit checkpoint: %w", err)
	}
	return c, nil
}

// Verify checks that c was signed by the CA whose certificate is ca.
// Failures wrap ErrForged or ErrOtherHub.
func (c Checkpoint) Verify(ca *x509.Certificate) error {
	if c.Hub != pki.Fingerprint(ca) {
		return fmt.Errorf("%w: it names CA %s, this hub's is %s", ErrOtherHub, short(c.Hub), short(pki.Fingerprint(ca)))
	}
	alg, err := algorithm(ca.PublicKey)
	if err != nil {
		return err
	}
	if c.Version != Version || c.Alg != alg.String() || c.Seq < 1 || c.At.IsZero() {
		return fmt.Errorf("%w: version %d, algorithm %q, record %d", ErrForged, c.Version, c.Alg, c.Seq)
	}
	if b, err := hex.DecodeString(c.Head); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("%w: head %q is not a SHA-256 hash", ErrForged, short(c.Head))
	}
	msg, err := c.signed()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrForged, err)
	}
	if err := ca.CheckSignature(alg, msg, c.Signature); err != nil {
		return fmt.Errorf("%w: the signature does not verify under the hub's CA", ErrForged)
	}
	return nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}
