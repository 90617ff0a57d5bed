// Package receipt holds the consumer's signed statement that it applied a
// batch: which resource, grant and sequence, the digest of the batch it
// applied, and when. The provider and the hub keep receipts as proof of
// delivery.
package receipt

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// Version is the receipt format version.
const Version = 1

// SealDomain is the signing domain of receipts (see seal.PrivateKey.Sign).
const SealDomain = "qianzhi-receipt-v1"

// Receipt is a consumer's signed statement that it applied one batch.
type Receipt struct {
	Version     int       `json:"version"` // Version
	Resource    string    `json:"resource"`
	Grant       string    `json:"grant"`
	Sequence    uint64    `json:"sequence"`
	Provider    string    `json:"provider"`
	Consumer    string    `json:"consumer"`
	BatchDigest string    `json:"batch_digest"` // lowercase hex of the batch digest
	Applied     time.Time `json:"applied"`
	// Mismatch, for a reconcile digest, lists the buckets in which the
	// consumer's rows differ from the provider's.
	Mismatch []int `json:"mismatch,omitempty"`
	// MismatchFiles, for a folder's verify batch, lists the files that
	// differ ("differs: PATH"), are missing ("missing: PATH") or are
	// present only at the consumer ("extra: PATH").
	MismatchFiles []string `json:"mismatch_files,omitempty"`
	SealAlg       string   `json:"seal_alg"`
	SealKeyID     string   `json:"seal_key_id"`
	Signature     []byte   `json:"signature"` // base64 in JSON
}

// For returns an unsigned receipt for the batch described by info, applied
// at the given time.
func For(info *batch.Info, applied time.Time) Receipt {
	h := &info.Header
	return Receipt{
		Version:     Version,
		Resource:    h.Resource,
		Grant:       h.Grant,
		Sequence:    h.Sequence,
		Provider:    h.Provider,
		Consumer:    h.Consumer,
		BatchDigest: info.DigestHex(),
		Applied:     applied,
	}
}

// Sign fills in Version (if zero), SealAlg and SealKeyID from s, normalizes
// Applied to UTC and signs the receipt's canonical bytes (see Canonical)
// under SealDomain.
func Sign(r Receipt, s batch.Signer) (Receipt, error) {
	if r.Version == 0 {
		r.Version = Version
	}
	r.Applied = r.Applied.UTC()
	r.SealAlg = s.Algorithm()
	r.SealKeyID = s.KeyID()
	if err := r.check(); err != nil {
		return Receipt{}, fmt.Errorf("receipt: sign: %w", err)
	}
	msg, err := r.Canonical()
	if err != nil {
		return Receipt{}, err
	}
	r.Signature = s.Sign(SealDomain, msg)
	return r, nil
}

// Canonical returns the bytes a receipt signature covers: the JSON encoding
// of r with Signature set to nil (so it appears as "signature":null), fields
// in struct order, as encoding/json writes them.
func (r Receipt) Canonical() ([]byte, error) {
	r.Signature = nil
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("receipt: encode: %w", err)
	}
	return b, nil
}

// Verify checks that r is well-formed and signed by pub. Every failure wraps
// batch.ErrRejected: a version other than Version, a SealAlg or SealKeyID
// that does not name pub, or a signature that does not verify (which also
// wraps seal.ErrBadSignature).
func (r Receipt) Verify(pub seal.PublicKey) error {
	if err := r.check(); err != nil {
		return batch.Reject(ErrInvalid, err.Error())
	}
	if r.SealAlg != pub.Algorithm() || r.SealKeyID != pub.KeyID() {
		return batch.Reject(seal.ErrBadSignature, fmt.Sprintf("receipt sealed by %s key %s, verifying with %s key %s",
			r.SealAlg, r.SealKeyID, pub.Algorithm(), pub.KeyID()))
	}
	msg, err := r.Canonical()
	if err != nil {
		return batch.Reject(ErrInvalid, err.Error())
	}
	if err := pub.Verify(SealDomain, msg, r.Signature); err != nil {
		return batch.Reject(seal.ErrBadSignature, fmt.Sprintf("receipt for %s/%s sequence %d", r.Resource, r.Grant, r.Sequence))
	}
	return nil
}

// Matches reports whether r is a receipt for the batch described by info:
// same resource, grant, sequence, provider, consumer and digest. It does not
// check the signature; call Verify for that. Mismatches wrap batch.ErrRejected.
func (r Receipt) Matches(info *batch.Info) error {
	want := For(info, r.Applied)
	if r.Resource != want.Resource || r.Grant != want.Grant || r.Sequence != want.Sequence ||
		r.Provider != want.Provider || r.Consumer != want.Consumer || r.BatchDigest != want.BatchDigest {
		return batch.Reject(ErrMismatch, fmt.Sprintf("receipt %s/%s #%d digest %s, batch %s/%s #%d digest %s",
			r.Resource, r.Grant, r.Sequence, r.BatchDigest, want.Resource, want.Grant, want.Sequence, want.BatchDigest))
	}
	return nil
}

var (
	// ErrInvalid means a receipt is malformed.
	ErrInvalid = errors.New("receipt invalid")
	// ErrMismatch means a receipt does not refer to the batch it is
	// checked against.
	ErrMismatch = errors.New("receipt does not match batch")
)

func (r *Receipt) check() error {
	var errs []error
	if r.Version != Version {
		errs = append(errs, fmt.Errorf("version %d, want %d", r.Version, Version))
	}
	for _, f := range []struct{ name, v string }{
		{"resource", r.Resource}, {"grant", r.Grant}, {"provider", r.Provider}, {"consumer", r.Consumer},
		{"seal_alg", r.SealAlg}, {"seal_key_id", r.SealKeyID},
	} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", f.name))
		}
	}
	if r.Sequence < 1 {
		errs = append(errs, errors.New("sequence must be at least 1"))
	}
	if d, err := hex.DecodeString(r.BatchDigest); err != nil || len(d) == 0 || hex.EncodeToString(d) != r.BatchDigest {
		errs = append(errs, fmt.Errorf("batch_digest %q is not lowercase hex", r.BatchDigest))
	}
	if r.Applied.IsZero() {
		errs = append(errs, errors.New("applied time missing"))
	}
	return errors.Join(errs...)
}

// Marshal encodes r as JSON.
func (r Receipt) Marshal() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("receipt: encode: %w", err)
	}
	return b, nil
}

// Unmarshal decodes a receipt from JSON. Unknown fields are an error, since
// the signature would not cover them.
func Unmarshal(b []byte) (Receipt, error) {
	var r Receipt
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Receipt{}, batch.Reject(ErrInvalid, fmt.Sprintf("decode: %v", err))
	}
	if dec.More() {
		return Receipt{}, batch.Reject(ErrInvalid, "trailing data after receipt")
	}
	return r, nil
}
