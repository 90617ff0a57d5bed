package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qianzhi/qianzhi/pkg/ident"
)

// Parameter types of declared calls. A value is checked against its type at
// the hub and again at the provider, so a mistyped ID number is refused
// before any database is asked.
const (
	ParamString     = "string"      // up to MaxLen characters (default 64), no control characters
	ParamInt        = "int"         // a decimal integer
	ParamCitizenID  = "citizen_id"  // 公民身份号码, GB 11643 (check digit verified)
	ParamCreditCode = "credit_code" // 统一社会信用代码, GB 32100 (check character verified)
)

// ParamTypes lists the parameter types.
var ParamTypes = []string{ParamString, ParamInt, ParamCitizenID, ParamCreditCode}

// DefaultMaxRows bounds a query call's answer when the call does not.
const DefaultMaxRows = 10

// CallDecl is a named call a provider declares on a table resource, for
// query (查询引用) and verification (比对验证). Consumers name the call and
// give its parameters; they never send SQL. The parameterised query itself
// stays in the provider's agent config; the declaration travels in the
// catalog entry.
type CallDecl struct {
	// Name identifies the call within its resource, e.g. by_id.
	Name        string      `json:"name" yaml:"name"`
	Description string      `json:"description,omitempty" yaml:"description"`
	Params      []CallParam `json:"params" yaml:"params"`
	// Fields are what the call answers (query) or checks (verify); each is
	// a field of the catalog entry.
	Fields []string `json:"fields" yaml:"fields"`
	// MaxRows bounds a query's answer (default DefaultMaxRows); a verify
	// call compares with the first row only.
	MaxRows int `json:"max_rows,omitempty" yaml:"max_rows"`
}

// CallParam is one parameter of a call.
type CallParam struct {
	Name        string `json:"name" yaml:"name"`
	Type        string `json:"type" yaml:"type"`
	Description string `json:"description,omitempty" yaml:"description"`
	// MaxLen bounds a string parameter in characters (default 64).
	MaxLen int `json:"max_len,omitempty" yaml:"max_len"`
}

// Validate checks the declaration itself (not its query).
func (d *CallDecl) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("call %q: "+format, append([]any{d.Name}, args...)...))
	}
	if err := ValidID("call", d.Name); err != nil {
		errs = append(errs, err)
	}
	if len(d.Params) == 0 {
		add("params are required: what names the subject (e.g. id_no of type citizen_id)")
	}
	seen := map[string]bool{}
	for _, p := range d.Params {
		if !validName(p.Name) {
			add("parameter %q: a name is letters, digits and '_', starting with a letter", p.Name)
		}
		if seen[p.Name] {
			add("parameter %q is listed twice", p.Name)
		}
		seen[p.Name] = true
		if !slices.Contains(ParamTypes, p.Type) {
			add("parameter %q: type %q: use %s", p.Name, p.Type, strings.Join(ParamTypes, ", "))
		}
		if p.MaxLen < 0 || p.MaxLen > 4000 {
			add("parameter %q: max_len %d is out of range 1 to 4000", p.Name, p.MaxLen)
		}
	}
	if len(d.Fields) == 0 {
		add("fields are required: what the call answers or checks")
	}
	if d.MaxRows < 0 || d.MaxRows > 1000 {
		add("max_rows %d is out of range 1 to 1000", d.MaxRows)
	}
	fs := map[string]bool{}
	for _, f := range d.Fields {
		if fs[f] {
			add("field %q is listed twice", f)
		}
		fs[f] = true
	}
	return errors.Join(errs...)
}

// Rows is the most rows a query call answers.
func (d *CallDecl) Rows() int {
	if d.MaxRows > 0 {
		return d.MaxRows
	}
	return DefaultMaxRows
}

// validName reports whether s is a parameter name: a letter, then letters,
// digits and '_' (so it can stand in a query as :name).
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, r := range s {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || !(r == '_' || r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// ErrBadParam wraps every refusal of a call's parameters or values.
var ErrBadParam = errors.New("bad call parameter")

// CheckParams checks a call's parameters: exactly the declared ones, each
// valid for its type. It returns them normalised (an ID number's x as X).
func (d *CallDecl) CheckParams(in map[string]string) (map[string]string, error) {
	for _, k := range slices.Sorted(maps.Keys(in)) {
		if !slices.ContainsFunc(d.Params, func(p CallParam) bool { return p.Name == k }) {
			return nil, fmt.Errorf("%w: call %s has no parameter %q (it takes: %s)", ErrBadParam, d.Name, truncate(k), strings.Join(d.ParamNames(), ", "))
		}
	}
	out := make(map[string]string, len(d.Params))
	for _, p := range d.Params {
		v, ok := in[p.Name]
		if !ok {
			return nil, fmt.Errorf("%w: %s is required (%s)", ErrBadParam, p.Name, p.Type)
		}
		n, err := p.Check(v)
		if err != nil {
			return nil, err
		}
		out[p.Name] = n
	}
	return out, nil
}

// Problem says what is wrong with params without quoting any value (the
// checks' own messages may quote digits of an ID number), for records that
// must hold no personal data. It names the problem CheckParams finds first.
func (d *CallDecl) Problem(params map[string]string) string {
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !slices.Contains(d.ParamNames(), k) {
			return fmt.Sprintf("call %s has no parameter %q", d.Name, truncate(k))
		}
	}
	for _, p := range d.Params {
		v, ok := params[p.Name]
		if !ok {
			return fmt.Sprintf("parameter %s (%s) is missing", p.Name, p.Type)
		}
		if _, err := p.Check(v); err != nil {
			return fmt.Sprintf("parameter %s is not a valid %s", p.Name, p.Type)
		}
	}
	return "bad parameters"
}

// ParamNames lists the call's parameter names in order.
func (d *CallDecl) ParamNames() []string {
	var out []string
	for _, p := range d.Params {
		out = append(out, p.Name)
	}
	return out
}

// CheckValues checks a verify call's values: each names a field of the
// call, none is empty or too long.
func (d *CallDecl) CheckValues(in map[string]string) error {
	if len(in) == 0 {
		return fmt.Errorf("%w: a verification needs at least one value to check (field=value), of: %s", ErrBadParam, strings.Join(d.Fields, ", "))
	}
	for f, v := range in {
		if !slices.Contains(d.Fields, f) {
			return fmt.Errorf("%w: call %s does not check field %q (it checks: %s)", ErrBadParam, d.Name, f, strings.Join(d.Fields, ", "))
		}
		if utf8.RuneCountInString(v) > 4000 || !utf8.ValidString(v) {
			return fmt.Errorf("%w: the value for %s is longer than 4000 characters or not UTF-8", ErrBadParam, f)
		}
	}
	return nil
}

// Check checks and normalises one value of the parameter.
func (p CallParam) Check(v string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: %s: %s", ErrBadParam, p.Name, why)
	}
	switch p.Type {
	case ParamCitizenID:
		n, err := ident.CitizenID(v)
		if err != nil {
			return bad(err.Error())
		}
		return n, nil
	case ParamCreditCode:
		n, err := ident.CreditCode(v)
		if err != nil {
			return bad(err.Error())
		}
		return n, nil
	case ParamInt:
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return bad(fmt.Sprintf("%q is not a whole number", truncate(v)))
		}
		return v, nil
	case ParamString:
		limit := p.MaxLen
		if limit == 0 {
			limit = 64
		}
		if !utf8.ValidString(v) {
			return bad("not UTF-8 text")
		}
		if n := utf8.RuneCountInString(v); n == 0 || n > limit {
			return bad(fmt.Sprintf("%d characters; want 1 to %d", n, limit))
		}
		for _, r := range v {
			if r < 0x20 || r == 0x7f {
				return bad("control characters are not allowed")
			}
		}
		return v, nil
	}
	return bad("unknown type " + p.Type)
}

func truncate(s string) string {
	if len(s) <= 40 {
		return s
	}
	n := 40
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.ToValidUTF8(s[:n], "�") + "…"
}

// CallRequest is a consumer's call (POST /v1/calls).
type CallRequest struct {
	Resource string `json:"resource"`
	Call     string `json:"call"`
	// Mode is query (the answer carries the fields) or verify (only
	// whether Values match).
	Mode   string            `json:"mode"`
	Params map[string]string `json:"params"`
	// Values, for verify, are the values to check, by field.
	Values map[string]string `json:"values,omitempty"`
	// TimeoutMS shortens the hub's call timeout for this call (0: the hub's).
	TimeoutMS int `json:"timeout_ms,omitempty"`
	// ConsumerKey is the public key (PKIX DER) of the certificate the
	// consumer connects with. With it the provider agrees the call's key
	// with the consumer and keys the receipt's digests (a version 2
	// receipt), so the hub cannot tell from them what was asked; the hub
	// refuses a key that is not the connection's.
	ConsumerKey []byte `json:"consumer_key,omitempty"`
}

// CallJob is a call the hub hands the provider's agent (GET /v1/calls/next).
// The parameters have passed the hub's checks; the provider checks them
// again against its own declaration.
type CallJob struct {
	ID       string            `json:"id"`
	Grant    string            `json:"grant"`
	Resource string            `json:"resource"`
	Call     string            `json:"call"`
	Mode     string            `json:"mode"`
	Consumer string            `json:"consumer"`
	Params   map[string]string `json:"params"`
	Values   map[string]string `json:"values,omitempty"`
	Asked    time.Time         `json:"asked"`
	Deadline time.Time         `json:"deadline"`
	// TimeoutMS is the time the call had left when the hub handed it
	// out: the provider times it from its own arrival, as its clock may
	// differ from the hub's.
	TimeoutMS int `json:"timeout_ms,omitempty"`
	// ConsumerKey is the consumer's CallRequest.ConsumerKey, if it sent
	// one.
	ConsumerKey []byte `json:"consumer_key,omitempty"`
}

// CallAnswer is a call's answer: the provider posts it to the hub
// (POST /v1/calls/{id}/answer), which hands it to the waiting consumer.
// A verify answer has Found and Matches only: no source value, not even
// masked.
type CallAnswer struct {
	ID       string `json:"id"`
	Grant    string `json:"grant"`
	Resource string `json:"resource"`
	Call     string `json:"call"`
	Mode     string `json:"mode"`
	// Error, from the provider, says why it could not answer; such a call
	// has no receipt.
	Error string `json:"error,omitempty"`
	// Fields and Rows, for query: the granted fields, projected and
	// masked per grant; a nil value is NULL.
	Fields []string    `json:"fields,omitempty"`
	Rows   [][]*string `json:"rows,omitempty"`
	// Found reports whether the subject exists (any row).
	Found bool `json:"found"`
	// Matches, for verify: whether each checked field matches.
	Matches map[string]bool `json:"matches,omitempty"`
	// Receipt is the provider's signed call receipt (调用记录凭证), JSON
	// exactly as signed (see receipt.Call).
	Receipt json.RawMessage `json:"receipt,omitempty"`
	// CallKey (hex) is the call's key, which keys a version 2 receipt's
	// digests. Only the consumer's agent sets it, in the answer it hands
	// its own application, after checking the receipt with it: kept with
	// the parameters and the receipt, it proves what this call asked and
	// got, and nothing about any other call. It never passes the hub.
	CallKey string `json:"call_key,omitempty"`
}

// AnswerResult is what became of one answer a provider sent in a list
// (POST /v1/calls/answers): Status 204 when the hub took it, otherwise the
// status and error the single-answer route would have given.
type AnswerResult struct {
	ID     string `json:"id"`
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

// Call statuses in the hub's call records.
const (
	CallAnswered = "answered" // with a signed receipt
	CallRefused  = "refused"  // by the hub: no grant, limits, bad parameters
	CallFailed   = "failed"   // the provider could not answer
	CallTimeout  = "timeout"  // the provider did not answer in time
)

// CallRecord is the hub's record of one call (GET /v1/calls). The answer
// itself is never stored at the hub: only its digest, inside the receipt.
type CallRecord struct {
	ID       string    `json:"id"`
	Grant    string    `json:"grant,omitempty"`
	Resource string    `json:"resource"`
	Call     string    `json:"call"`
	Mode     string    `json:"mode"`
	Provider string    `json:"provider,omitempty"`
	Consumer string    `json:"consumer"`
	Asked    time.Time `json:"asked"`
	Status   string    `json:"status"`
	Reason   string    `json:"reason,omitempty"`
	// TookMS is from the hub receiving the call to its answer.
	TookMS  float64         `json:"took_ms"`
	Receipt json.RawMessage `json:"receipt,omitempty"`
}
