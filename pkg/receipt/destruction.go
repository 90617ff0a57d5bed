package receipt

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// DestructionDomain is the signing domain of destruction receipts.
const DestructionDomain = "qianzhi-destruction-v1"

// Destruction is a consumer's signed statement that it destroyed the data
// it received under a grant that ended (数据销毁).
type Destruction struct {
	Version   int       `json:"version"`
	Resource  string    `json:"resource"`
	Grant     string    `json:"grant"`
	Provider  string    `json:"provider"`
	Consumer  string    `json:"consumer"`
	Destroyed time.Time `json:"destroyed"`
	// What says what was destroyed, e.g. "200 rows of table people".
	What      string `json:"what"`
	SealAlg   string `json:"seal_alg"`
	SealKeyID string `json:"seal_key_id"`
	Signature []byte `json:"signature"`
}

func (d Destruction) canonical() ([]byte, error) {
	d.Signature = nil
	return json.Marshal(d)
}

// SignDestruction signs d with the consumer's seal key.
func SignDestruction(d Destruction, s batch.Signer) (Destruction, error) {
	d.Version = Version
	d.Destroyed = d.Destroyed.UTC()
	d.SealAlg, d.SealKeyID = s.Algorithm(), s.KeyID()
	if d.Grant == "" || d.Consumer == "" || d.Destroyed.IsZero() {
		return d, errors.New("destruction receipt: grant, consumer and time are required")
	}
	msg, err := d.canonical()
	if err != nil {
		return d, err
	}
	d.Signature = s.Sign(DestructionDomain, msg)
	return d, nil
}

// Verify checks d's signature against the consumer's key; failures wrap
// batch.ErrRejected.
func (d Destruction) Verify(pub seal.PublicKey) error {
	return verifySealed("destruction receipt for grant "+d.Grant, d.Version, []int{Version}, d.SealAlg, d.SealKeyID, d.Signature, d.canonical, DestructionDomain, pub)
}

// verifySealed checks a statement sealed as the receipts here are: its
// version (one of versions), the key it names, and its signature over
// canonical (the statement without its signature). Failures wrap
// batch.ErrRejected.
func verifySealed(what string, version int, versions []int, alg, keyID string, sig []byte, canonical func() ([]byte, error), domain string, pub seal.PublicKey) error {
	if !slices.Contains(versions, version) || alg != pub.Algorithm() || keyID != pub.KeyID() {
		return batch.Reject(ErrInvalid, fmt.Sprintf("%s: version %d sealed by %s key %s", what, version, alg, keyID))
	}
	msg, err := canonical()
	if err != nil {
		return batch.Reject(ErrInvalid, err.Error())
	}
	if err := pub.Verify(domain, msg, sig); err != nil {
		return batch.Reject(seal.ErrBadSignature, what)
	}
	return nil
}
