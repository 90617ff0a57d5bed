// Package mask holds the masking rules (脱敏) a grant may put on a field.
// The provider's agent applies them before sealing, so an unmasked value
// never leaves the department's server.
//
// Rules, as written in grants and on the command line:
//
//	keep(A,B)    keep the first A and last B characters, star the rest:
//	             110101199003078515 → 110***********8515
//	idcard       keep(3,4), for ID numbers (身份证号)
//	phone        keep(3,4), for mobile numbers
//	name         keep(1,0): 张三丰 → 张**
//	truncate(N)  keep the first N characters: 北京市海淀区中关村 → 北京市 (N=3)
//	hash         a keyed hash (HMAC-SHA256 with the grant's secret, 32 hex
//	             digits): equal values stay equal, so records still join,
//	             but the value cannot be recovered or guessed by hashing
//	             candidates without the provider's secret
//	null         the field travels as NULL
//
// Characters are Unicode characters, not bytes: Chinese names mask as
// expected. A value no longer than what keep(A,B) would keep is starred
// whole, so short values are not given away.
package mask

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Rule is one parsed masking rule.
type Rule struct {
	Kind string // "keep", "truncate", "hash" or "null"
	A, B int    // keep: first A and last B; truncate: A
	text string
}

// Kinds of rules.
const (
	Keep     = "keep"
	Truncate = "truncate"
	Hash     = "hash"
	Null     = "null"
)

// HashLen is the length of a hashed value in hex digits.
const HashLen = 32

// Parse reads a rule.
func Parse(s string) (Rule, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "idcard", "phone":
		return Rule{Kind: Keep, A: 3, B: 4, text: s}, nil
	case "name":
		return Rule{Kind: Keep, A: 1, B: 0, text: s}, nil
	case Hash, Null:
		return Rule{Kind: s, text: s}, nil
	}
	name, args, ok := strings.Cut(strings.TrimSuffix(s, ")"), "(")
	if ok && strings.HasSuffix(s, ")") {
		var n []int
		for _, a := range strings.Split(args, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(a))
			if err != nil || v < 0 || v > 1000 {
				n = nil
				break
			}
			n = append(n, v)
		}
		switch {
		case name == Keep && len(n) == 2:
			return Rule{Kind: Keep, A: n[0], B: n[1], text: s}, nil
		case name == Truncate && len(n) == 1:
			return Rule{Kind: Truncate, A: n[0], text: s}, nil
		}
	}
	return Rule{}, fmt.Errorf("masking rule %q: use keep(A,B), idcard, phone, name, truncate(N), hash or null", s)
}

func (r Rule) String() string { return r.text }

// Deterministic reports whether equal values mask to equal, distinct
// values to distinct ones: the only kind a key column may have.
func (r Rule) Deterministic() bool { return r.Kind == Hash }

// Apply masks one canonical value; NULL stays NULL. secret is the grant's
// hashing secret.
func (r Rule) Apply(v []byte, secret []byte) []byte {
	if v == nil {
		return nil
	}
	switch r.Kind {
	case Null:
		return nil
	case Hash:
		m := hmac.New(sha256.New, secret)
		m.Write(v)
		return []byte(hex.EncodeToString(m.Sum(nil))[:HashLen])
	case Truncate:
		n := 0
		for i := range string(v) {
			if n == r.A {
				return v[:i:i]
			}
			n++
		}
		return v
	case Keep:
		runes := []rune(string(v))
		if !utf8.Valid(v) {
			runes = []rune(hex.EncodeToString(v)) // bytes: mask their hex
		}
		out := make([]rune, len(runes))
		for i, c := range runes {
			if len(runes) > r.A+r.B && (i < r.A || i >= len(runes)-r.B) {
				out[i] = c
			} else {
				out[i] = '*'
			}
		}
		return []byte(string(out))
	}
	return nil
}

// Column is the column a masked value travels in: masked values are
// text, except NULL, which keeps the type and becomes nullable.
func (r Rule) Column(c batch.Column) batch.Column {
	out := batch.Column{Name: c.Name, Nullable: c.Nullable}
	switch r.Kind {
	case Null:
		c.Nullable = true
		return c
	case Hash:
		out.Type, out.Length = batch.TypeString, HashLen
	case Truncate:
		out.Type, out.Length = batch.TypeString, int64(r.A)
	default:
		out.Type, out.Length = batch.TypeString, c.Length
		if c.Type != batch.TypeString || out.Length == 0 {
			out.Type, out.Length = batch.TypeText, 0
		}
	}
	return out
}

// Secret derives a grant's hashing secret from the provider's mask key,
// which never leaves its server: each grant hashes differently, so two
// consumers cannot join their data on hashed values.
func Secret(key []byte, grant string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("qianzhi-mask-v1\x00" + grant))
	return m.Sum(nil)
}
