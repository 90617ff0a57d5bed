package connectors

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// Validate checks the declaration and its query: a single SELECT that names
// every parameter as :name and nothing else that way, and has no other
// placeholder ('?', ':1') outside quotes and comments.
func (c *CallDef) Validate() error {
	errs := []error{c.CallDecl.Validate()}
	q := strings.TrimSpace(c.Query)
	switch {
	case q == "":
		errs = append(errs, fmt.Errorf("call %q: query is required: a SELECT naming each parameter as :name", c.Name))
	case !strings.EqualFold(firstWord(q), "SELECT") && !strings.EqualFold(firstWord(q), "WITH"):
		errs = append(errs, fmt.Errorf("call %q: query must be a SELECT", c.Name))
	default:
		if _, _, err := c.Compile(func(int) string { return "?" }); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func firstWord(s string) string {
	if i := strings.IndexFunc(s, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '(' }); i >= 0 {
		return s[:i]
	}
	return s
}

// Compile turns the query's :name placeholders into the engine's (param(1),
// param(2), …) and returns the parameter names in the order to bind them.
// Quoted text, quoted identifiers and comments are left alone, so ':' in
// a literal is not a placeholder.
func (c *CallDef) Compile(param func(i int) string) (string, []string, error) {
	q := c.Query
	var b strings.Builder
	var order []string
	used := map[string]bool{}
	for i := 0; i < len(q); {
		ch := q[i]
		switch {
		case ch == '\'' || ch == '"' || ch == '`':
			j := i + 1
			for j < len(q) && q[j] != ch {
				if q[j] == '\\' && ch == '\'' {
					j++ // MySQL's backslash escape
				}
				j++
			}
			if j >= len(q) {
				return "", nil, fmt.Errorf("call %q: query has an unterminated %c", c.Name, ch)
			}
			b.WriteString(q[i : j+1])
			i = j + 1
		case ch == '-' && strings.HasPrefix(q[i:], "--"):
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				j = len(q) - i
			}
			b.WriteString(q[i : i+j])
			i += j
		case ch == '/' && strings.HasPrefix(q[i:], "/*"):
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return "", nil, fmt.Errorf("call %q: query has an unterminated comment", c.Name)
			}
			b.WriteString(q[i : i+2+j+2])
			i += 2 + j + 2
		case ch == ';':
			if strings.TrimSpace(q[i+1:]) != "" {
				return "", nil, fmt.Errorf("call %q: query must be one statement", c.Name)
			}
			i = len(q)
		case ch == ':' && i+1 < len(q) && isLetter(q[i+1]) && (i == 0 || !isIdent(q[i-1]) && q[i-1] != ':'):
			j := i + 1
			for j < len(q) && isIdent(q[j]) {
				j++
			}
			name := q[i+1 : j]
			if !slices.ContainsFunc(c.Params, func(p api.CallParam) bool { return p.Name == name }) {
				return "", nil, fmt.Errorf("call %q: query names :%s, which is not among its params (%s)", c.Name, name, strings.Join(c.ParamNames(), ", "))
			}
			used[name] = true
			order = append(order, name)
			b.WriteString(param(len(order)))
			i = j
		// Placeholders other than :name would reach the engine unbound, and
		// every call would fail ("missing argument") instead of config check.
		case ch == '?':
			return "", nil, fmt.Errorf("call %q: query has a '?' outside quotes: write each parameter as :name", c.Name)
		case ch == ':' && i+1 < len(q) && isIdent(q[i+1]) && (i == 0 || q[i-1] != ':'):
			k, j := i, i+1
			for k > 0 && isIdent(q[k-1]) {
				k--
			}
			for j < len(q) && isIdent(q[j]) {
				j++
			}
			return "", nil, fmt.Errorf("call %q: query has %q, which is not a parameter: write each parameter as :name, starting with a letter, after a space or an operator", c.Name, q[k:j])
		default:
			b.WriteByte(ch)
			i++
		}
	}
	for _, p := range c.Params {
		if !used[p.Name] {
			return "", nil, fmt.Errorf("call %q: parameter %s is not used in the query (write it as :%s)", c.Name, p.Name, p.Name)
		}
	}
	return b.String(), order, nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isIdent(c byte) bool  { return isLetter(c) || c >= '0' && c <= '9' || c == '_' }
