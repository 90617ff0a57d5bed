package connectors

import (
	"strconv"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// FuzzCompile compiles arbitrary queries with arbitrary parameter lists in
// the placeholder styles of the engines (MySQL and SQLite "?", Oracle
// ":1"): a query is either refused with an error naming the call, or its
// compiled text holds exactly the placeholders the compiler wrote, one per
// name it returned, each a declared parameter. A placeholder the compiler
// did not write would be bound to nothing, and every call would fail.
func FuzzCompile(f *testing.F) {
	for _, s := range [][2]string{
		{"SELECT id_no, name, address FROM people WHERE id_no = :id_no", "id_no"},
		{"SELECT name FROM people WHERE id_no = :id_no AND name = :name -- :x\n", "id_no,name"},
		{"SELECT 'a:b', `c:d`, \"e:f\" /* :g */ FROM t WHERE a = :a AND b = :a", "a"},
		{"WITH x AS (SELECT * FROM t WHERE k = :k) SELECT v::text FROM x;", "k"},
		{"SELECT * FROM t WHERE a = :a AND b = ?", "a"},
		{"SELECT * FROM t WHERE a = :a AND b = :1", "a"},
		{"SELECT * FROM t WHERE a = 'it\\'s' AND b = :b", "b"},
		{"SELECT * FROM t WHERE a = :a; DROP TABLE t", "a"},
		{"SELECT * FROM t WHERE a = 'open", "a"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, query, names string) {
		c := &CallDef{CallDecl: api.CallDecl{Name: "by_id"}, Query: query}
		for _, n := range strings.Split(names, ",") {
			c.Params = append(c.Params, api.CallParam{Name: n, Type: api.ParamString})
		}
		q1, order, err := c.Compile(func(int) string { return "?" })
		q2, order2, err2 := c.Compile(func(i int) string { return ":" + strconv.Itoa(i) })
		if (err == nil) != (err2 == nil) || strings.Join(order, ",") != strings.Join(order2, ",") {
			t.Fatalf("the placeholder style changed the outcome: %v, %v", err, err2)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), `call "by_id": `) {
				t.Fatalf("refusal %q does not name the call", err)
			}
			return
		}
		used := map[string]bool{}
		for _, n := range order {
			if !strings.Contains(","+names+",", ","+n+",") {
				t.Fatalf("bound %q, which is not a declared parameter", n)
			}
			used[n] = true
		}
		for _, p := range c.Params {
			if !used[p.Name] {
				t.Fatalf("declared parameter %q is not bound", p.Name)
			}
		}
		var want []string
		for i := range order {
			want = append(want, ":"+strconv.Itoa(i+1))
		}
		if got := placeholders(q1); strings.Join(got, " ") != strings.Join(slicesRepeat("?", len(order)), " ") {
			t.Fatalf("compiled %q for %d parameters holds placeholders %q", q1, len(order), got)
		}
		if got := placeholders(q2); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("compiled %q holds placeholders %q, want %q", q2, got, want)
		}
	})
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// placeholders lists what an engine could take for a bind parameter in q,
// outside quotes and comments: "?" and ':' before a letter, digit or '_'
// (but not the '::' of a cast).
func placeholders(q string) []string {
	var out []string
	for i := 0; i < len(q); i++ {
		switch ch := q[i]; {
		case ch == '\'' || ch == '"' || ch == '`':
			for i++; i < len(q) && q[i] != ch; i++ {
				if q[i] == '\\' && ch == '\'' {
					i++
				}
			}
		case strings.HasPrefix(q[i:], "--"):
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case strings.HasPrefix(q[i:], "/*"):
			j := strings.Index(q[i+2:], "*/")
			if j < 0 {
				return append(out, "unterminated comment")
			}
			i += 2 + j + 1
		case ch == '?':
			out = append(out, "?")
		case ch == ':' && i+1 < len(q) && isIdent(q[i+1]) && (i == 0 || q[i-1] != ':'):
			j := i + 1
			for j < len(q) && isIdent(q[j]) {
				j++
			}
			out = append(out, q[i:j])
			i = j - 1
		}
	}
	return out
}
