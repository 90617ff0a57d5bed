package receipt

import (
	"bytes"
	"crypto/hmac"
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

// Versions of call receipts. Both verify: the version is signed, so a
// receipt cannot be passed off as the other kind.
const (
	// CallPlain receipts (the first format) have SHA-256 digests, which
	// anyone who guesses the parameters can compute: the hub could confirm
	// a guessed ID number from its records.
	CallPlain = Version
	// CallKeyed receipts have digests keyed with the call's key (see
	// CallKeyer), which only the consumer and the provider can derive, and
	// name the two public keys it was agreed from.
	CallKeyed = 2
)

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
	// ParamsDigest is ParamsDigest (version 1) or KeyedParamsDigest
	// (version 2) of the call's ID, parameters and values.
	ParamsDigest string `json:"params_digest"`
	// AnswerDigest is AnswerDigest (version 1) or KeyedAnswerDigest
	// (version 2) of what the provider answered.
	AnswerDigest string `json:"answer_digest"`
	// Rows is how many rows a query answered; Found whether the subject exists.
	Rows  int  `json:"rows"`
	Found bool `json:"found"`
	// ConsumerKey and ProviderKey, in version 2, are the nodes' public
	// keys (PKIX DER) the call's key was agreed from. They are left out of
	// a version 1 receipt, whose signed bytes stay as they were.
	ConsumerKey []byte `json:"consumer_key,omitempty"`
	ProviderKey []byte `json:"provider_key,omitempty"`
	SealAlg     string `json:"seal_alg"`
	SealKeyID   string `json:"seal_key_id"`
	Signature   []byte `json:"signature"`
}

func (c Call) canonical() ([]byte, error) {
	c.Signature = nil
	return json.Marshal(c)
}

// SignCall signs c with the provider's seal key. A c without a version is
// a version 1 receipt; a version 2 one must name both nodes' keys.
func SignCall(c Call, s batch.Signer) (Call, error) {
	if c.Version == 0 {
		c.Version = CallPlain
	}
	c.Asked, c.Answered = c.Asked.UTC(), c.Answered.UTC()
	c.SealAlg, c.SealKeyID = s.Algorithm(), s.KeyID()
	switch {
	case c.ID == "" || c.Grant == "" || c.Provider == "" || c.Consumer == "" || c.Answered.IsZero():
		return c, errors.New("call receipt: id, grant, provider, consumer and time are required")
	case c.Version != CallPlain && c.Version != CallKeyed:
		return c, fmt.Errorf("call receipt: version %d: want %d or %d", c.Version, CallPlain, CallKeyed)
	case c.Version == CallKeyed && (len(c.ConsumerKey) == 0 || len(c.ProviderKey) == 0):
		return c, errors.New("call receipt: a keyed receipt names the consumer's and the provider's keys")
	case c.Version == CallPlain && (len(c.ConsumerKey) > 0 || len(c.ProviderKey) > 0):
		return c, errors.New("call receipt: a version 1 receipt names no keys")
	}
	msg, err := c.canonical()
	if err != nil {
		return c, err
	}
	c.Signature = s.Sign(CallDomain, msg)
	return c, nil
}

// Verify checks c's signature against the provider's key; failures wrap
// batch.ErrRejected. Receipts of both versions verify.
func (c Call) Verify(pub seal.PublicKey) error {
	return verifySealed("call receipt "+c.ID, c.Version, []int{CallPlain, CallKeyed}, c.SealAlg, c.SealKeyID, c.Signature, c.canonical, CallDomain, pub)
}

// Covers checks that c is the receipt of call job, answered by provider
// ("" for any), and of answer a: the same call, grant, nodes, parameters
// and answer; a verification's answer carries no fields or rows. key is
// the call's key, which a version 2 receipt needs (a version 1 receipt
// ignores it). It does not check the seal: Verify does.
func (c Call) Covers(job api.CallJob, provider string, a *api.CallAnswer, key []byte) error {
	if err := c.Describes(job, provider, a); err != nil {
		return err
	}
	params := ParamsDigest(job.ID, job.Params, job.Values)
	answer := AnswerDigest(a.Fields, a.Rows, a.Found, a.Matches)
	if c.Version == CallKeyed {
		if len(key) == 0 {
			return errors.New("the receipt's digests are keyed with the call's key, which is not at hand")
		}
		params = KeyedParamsDigest(key, job.ID, job.Params, job.Values)
		answer = KeyedAnswerDigest(key, a.Fields, a.Rows, a.Found, a.Matches)
	}
	switch {
	case !hmac.Equal([]byte(c.ParamsDigest), []byte(params)):
		return errors.New("the receipt covers other parameters than the call's")
	case !hmac.Equal([]byte(c.AnswerDigest), []byte(answer)):
		return errors.New("the receipt covers another answer than the one sent")
	}
	return nil
}

// Describes checks what can be checked of c without the call's key (as the
// hub, which never has it, checks): c names call job, answered by provider
// ("" for any), with answer a's count of rows and whether it found the
// subject; a version 2 receipt names the consumer key the job carried; a
// verification's answer carries no fields or rows.
func (c Call) Describes(job api.CallJob, provider string, a *api.CallAnswer) error {
	switch {
	case c.ID != job.ID || c.Grant != job.Grant || c.Resource != job.Resource || c.Call != job.Call || c.Mode != job.Mode ||
		provider != "" && c.Provider != provider || c.Consumer != job.Consumer:
		return fmt.Errorf("the receipt is for call %s under grant %s (%s/%s, %s, %s→%s), not this call", clip(c.ID), clip(c.Grant),
			clip(c.Resource), clip(c.Call), clip(c.Mode), clip(c.Provider), clip(c.Consumer))
	case c.Rows != len(a.Rows) || c.Found != a.Found:
		return fmt.Errorf("the receipt says %d rows, found %v; the answer has %d rows, found %v", c.Rows, c.Found, len(a.Rows), a.Found)
	case c.Version == CallKeyed && !bytes.Equal(c.ConsumerKey, job.ConsumerKey):
		return errors.New("the receipt's digests are keyed with another consumer key than the call's")
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
// verification, the values checked: the digest of a version 1 receipt.
// Maps marshal with sorted keys, so both sides compute the same digest.
func ParamsDigest(id string, params, values map[string]string) string {
	sum := sha256.Sum256(paramsText(id, params, values))
	return hex.EncodeToString(sum[:])
}

// AnswerDigest is the SHA-256 (hex) of an answer's content: the fields and
// rows of a query, whether the subject was found, and a verification's
// matches: the digest of a version 1 receipt.
func AnswerDigest(fields []string, rows [][]*string, found bool, matches map[string]bool) string {
	sum := sha256.Sum256(answerText(fields, rows, found, matches))
	return hex.EncodeToString(sum[:])
}

// KeyedParamsDigest is the HMAC-SHA256 (hex) under the call's key of what
// ParamsDigest digests: the digest of a version 2 receipt. Without the key
// no one can tell which parameters it covers, however few they could be.
func KeyedParamsDigest(key []byte, id string, params, values map[string]string) string {
	return keyed(key, "params", paramsText(id, params, values))
}

// KeyedAnswerDigest is the HMAC-SHA256 (hex) under the call's key of what
// AnswerDigest digests: the digest of a version 2 receipt.
func KeyedAnswerDigest(key []byte, fields []string, rows [][]*string, found bool, matches map[string]bool) string {
	return keyed(key, "answer", answerText(fields, rows, found, matches))
}

// keyed is the HMAC-SHA256 (hex) of what, labelled, under key: the label
// keeps a parameters' digest from ever equalling an answer's.
func keyed(key []byte, label string, what []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write(what)
	return hex.EncodeToString(m.Sum(nil))
}

func paramsText(id string, params, values map[string]string) []byte {
	b, _ := json.Marshal(struct {
		ID     string            `json:"id"`
		Params map[string]string `json:"params"`
		Values map[string]string `json:"values,omitempty"`
	}{id, params, values})
	return b
}

func answerText(fields []string, rows [][]*string, found bool, matches map[string]bool) []byte {
	b, _ := json.Marshal(struct {
		Fields  []string        `json:"fields"`
		Rows    [][]*string     `json:"rows"`
		Found   bool            `json:"found"`
		Matches map[string]bool `json:"matches"`
	}{fields, rows, found, matches})
	return b
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
