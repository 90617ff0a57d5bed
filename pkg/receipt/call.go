package receipt

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// CallDomain is the signing domain of call receipts.
const CallDomain = "qianzhi-call-v1"

// Call is the provider's signed record of one answered call (调用记录凭证):
// who asked what of which resource under which grant, when, and digests of
// the question and the answer. It carries neither the parameters nor the
// answer, so the hub can keep it without keeping the data; the consumer,
// who holds both, can show that they are what the provider signed.
type Call struct {
	Version  int       `json:"version"`
	ID       string    `json:"id"`
	Grant    string    `json:"grant"`
	Resource string    `json:"resource"`
	Call     string    `json:"call"`
	Mode     string    `json:"mode"`
	Provider string    `json:"provider"`
	Consumer string    `json:"consumer"`
	Asked    time.Time `json:"asked"`
	Answered time.Time `json:"answered"`
	// ParamsDigest is ParamsDigest of the call's ID, parameters and values.
	ParamsDigest string `json:"params_digest"`
	// AnswerDigest is AnswerDigest of what the provider answered.
	AnswerDigest string `json:"answer_digest"`
	// Rows is how many rows a query answered; Found whether the subject exists.
	Rows      int    `json:"rows"`
	Found     bool   `json:"found"`
	SealAlg   string `json:"seal_alg"`
	SealKeyID string `json:"seal_key_id"`
	Signature []byte `json:"signature"`
}

func (c Call) canonical() ([]byte, error) {
	c.Signature = nil
	return json.Marshal(c)
}

// SignCall signs c with the provider's seal key.
func SignCall(c Call, s batch.Signer) (Call, error) {
	c.Version = Version
	c.Asked, c.Answered = c.Asked.UTC(), c.Answered.UTC()
	c.SealAlg, c.SealKeyID = s.Algorithm(), s.KeyID()
	if c.ID == "" || c.Grant == "" || c.Provider == "" || c.Consumer == "" || c.Answered.IsZero() {
		return c, errors.New("call receipt: id, grant, provider, consumer and time are required")
	}
	msg, err := c.canonical()
	if err != nil {
		return c, err
	}
	c.Signature = s.Sign(CallDomain, msg)
	return c, nil
}

// Verify checks c's signature against the provider's key; failures wrap
// batch.ErrRejected.
func (c Call) Verify(pub seal.PublicKey) error {
	return verifySealed("call receipt "+c.ID, c.Version, c.SealAlg, c.SealKeyID, c.Signature, c.canonical, CallDomain, pub)
}

// Covers checks that c is the receipt of call job, answered by provider
// ("" for any), and of answer a: the same call, grant, nodes, parameters
// and answer; a verification's answer carries no fields or rows. It does
// not check the seal: Verify does.
func (c Call) Covers(job api.CallJob, provider string, a *api.CallAnswer) error {
	switch {
	case c.ID != job.ID || c.Grant != job.Grant || c.Resource != job.Resource || c.Call != job.Call || c.Mode != job.Mode ||
		provider != "" && c.Provider != provider || c.Consumer != job.Consumer:
		return fmt.Errorf("the receipt is for call %s under grant %s (%s/%s, %s, %s→%s), not this call", clip(c.ID), clip(c.Grant),
			clip(c.Resource), clip(c.Call), clip(c.Mode), clip(c.Provider), clip(c.Consumer))
	case c.ParamsDigest != ParamsDigest(job.ID, job.Params, job.Values):
		return errors.New("the receipt covers other parameters than the call's")
	case c.AnswerDigest != AnswerDigest(a.Fields, a.Rows, a.Found, a.Matches):
		return errors.New("the receipt covers another answer than the one sent")
	case job.Mode == api.ModeVerify && (len(a.Fields) > 0 || len(a.Rows) > 0):
		return errors.New("a verification's answer carries fields or rows; it may say only whether the subject was found and each value matches")
	}
	return nil
}

// clip shortens what a receipt says for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// ParseCall reads a call receipt.
func ParseCall(b []byte) (Call, error) {
	var c Call
	if err := json.Unmarshal(b, &c); err != nil {
		return c, batch.Reject(ErrInvalid, "call receipt: "+err.Error())
	}
	return c, nil
}

// ParamsDigest is the SHA-256 (hex) of a call's ID, parameters and, for a
// verification, the values checked. Maps marshal with sorted keys, so both
// sides compute the same digest.
func ParamsDigest(id string, params, values map[string]string) string {
	b, _ := json.Marshal(struct {
		ID     string            `json:"id"`
		Params map[string]string `json:"params"`
		Values map[string]string `json:"values,omitempty"`
	}{id, params, values})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// AnswerDigest is the SHA-256 (hex) of an answer's content: the fields and
// rows of a query, whether the subject was found, and a verification's
// matches.
func AnswerDigest(fields []string, rows [][]*string, found bool, matches map[string]bool) string {
	b, _ := json.Marshal(struct {
		Fields  []string        `json:"fields"`
		Rows    [][]*string     `json:"rows"`
		Found   bool            `json:"found"`
		Matches map[string]bool `json:"matches"`
	}{fields, rows, found, matches})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// CheckCallSeal checks a stored call receipt's seal with the provider's
// key, found by key(node, keyID); nil when it verifies.
func CheckCallSeal(raw []byte, key func(node, keyID string) (seal.PublicKey, error)) error {
	c, err := ParseCall(raw)
	if err != nil {
		return err
	}
	pub, err := key(c.Provider, c.SealKeyID)
	if err != nil {
		return fmt.Errorf("seal key %s of %s: %w", c.SealKeyID, c.Provider, err)
	}
	return c.Verify(pub)
}
