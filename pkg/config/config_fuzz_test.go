package config

import (
	"errors"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// fuzzDoc is deep enough for aliases to nest several levels, as the
// agent's resources do (catalog → calls → params).
type fuzzDoc struct {
	Hub   string        `yaml:"hub"`
	Poll  time.Duration `yaml:"poll"`
	Spool inner         `yaml:"spool"`
	Lines []struct {
		ID    string `yaml:"id"`
		Calls []struct {
			Name   string `yaml:"name"`
			Params []struct {
				Name string `yaml:"name"`
				Size Size   `yaml:"size"`
			} `yaml:"params"`
		} `yaml:"calls"`
		Tags map[string]inner `yaml:"tags"`
	} `yaml:"lines"`
}

// FuzzParse loads arbitrary YAML: Parse must return, without panicking
// and with work bounded by the document's size (anchors and aliases
// included), and every problem it reports must be a *Error of one line
// naming the file, with the line when the YAML parser knew it.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"../../configs/agent.yaml", "../../configs/central.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("hub: a:1\npoll: 2s\nspool:\n  quota: 2GiB\n  qouta: 1\n"))
	f.Add([]byte("p: &p {name: x, size: 1KiB}\nc: &c {name: c, params: [*p, *p]}\nlines: [{id: a, calls: [*c, *c], tags: {t: {dir: d}}}]\n"))
	f.Add([]byte("lines:\n  - id: [x\n"))
	// Aliases of aliases: 20 lines, each of 20 calls of 20 params, written
	// once each.
	f.Add([]byte("p: &p {name: x}\nc: &c {params: [" + strings.Repeat("*p, ", 19) + "*p]}\n" +
		"l: &l {calls: [" + strings.Repeat("*c, ", 19) + "*c]}\nlines: [" + strings.Repeat("*l, ", 19) + "*l]\n"))
	lineInMsg := regexp.MustCompile(`^line \d+:`)
	f.Fuzz(func(t *testing.T, b []byte) {
		var v fuzzDoc
		c := newChecker("f.yaml")
		err := c.parse(b, &v)
		if limit := 8 * (nodes(b) + 1); c.visits > limit {
			t.Fatalf("checking keys visited %d nodes of a %d-byte document (limit %d)", c.visits, len(b), limit)
		}
		if err == nil {
			return
		}
		for _, e := range leaves(err) {
			var ce *Error
			if !errors.As(e, &ce) {
				t.Fatalf("problem %q (%T) is not a *config.Error", e, e)
			}
			if ce.File != "f.yaml" || !strings.HasPrefix(e.Error(), "f.yaml:") {
				t.Fatalf("problem %q does not name the file", e)
			}
			if strings.Contains(e.Error(), "\n") {
				t.Fatalf("problem %q takes more than one line", e)
			}
			if lineInMsg.MatchString(ce.Msg) {
				t.Fatalf("problem %q keeps its line in the message instead of file:line", e)
			}
		}
	})
}

// nodes counts the YAML nodes of b as written, each alias once.
func nodes(b []byte) int {
	var root yaml.Node
	if yaml.Unmarshal(b, &root) != nil {
		return len(b)
	}
	var count func(*yaml.Node) int
	count = func(n *yaml.Node) int {
		c := 1
		for _, k := range n.Content {
			c += count(k)
		}
		return c
	}
	return count(&root)
}

// leaves returns the errors joined in err.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	}
	return []error{err}
}

// FuzzParseSize: a size either parses to a non-negative byte count near
// what was written or is refused with an error that quotes it.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "512", "4MiB", "1GiB", "1gb", "64k", "1.5MiB", " 2 TiB ", "1 parsec", "99999999999TiB"} {
		f.Add(s)
	}
	re := regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)`)
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("error %q does not quote the size %q", err, s)
			}
			return
		}
		if v < 0 {
			t.Fatalf("ParseSize(%q) = %d, a negative size", s, v)
		}
		n, _ := strconv.ParseFloat(re.FindStringSubmatch(s)[1], 64)
		if float64(v) < n*(1-1e-9)-1 || math.IsInf(float64(v), 0) {
			t.Fatalf("ParseSize(%q) = %d, less than the number written", s, v)
		}
	})
}
