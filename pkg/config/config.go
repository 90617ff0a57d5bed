// Package config loads the YAML configuration files of both binaries.
//
// Loading is strict: every key must be known, and an unknown or misspelled
// key is an error naming the file and line (with a suggestion when a known
// key is close). Problems are gathered and reported together rather than one
// per run.
package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a configuration file.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Load reads path into v (a pointer to a struct with yaml tags). Keys not
// in v's type are errors. Fields whose type implements yaml.Unmarshaler are
// not checked here: their owners check them with CheckKeys.
func Load(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return Parse(path, b, v)
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// Parse is Load on bytes already read; name is used in errors.
func Parse(name string, b []byte, v any) error {
	return newChecker(name).parse(b, v)
}

func (c *checker) parse(b []byte, v any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return wrapYAML(c.file, err)
	}
	if len(root.Content) == 0 {
		return &Error{File: c.file, Msg: "file is empty; see configs/ for a documented example"}
	}
	if errs := c.check(root.Content[0], reflect.TypeOf(v)); len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := root.Content[0].Decode(v); err != nil {
		return wrapYAML(c.file, err)
	}
	return nil
}

func wrapYAML(name string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var errs []error
		for _, m := range te.Errors {
			errs = append(errs, lineError(name, m))
		}
		return errors.Join(errs...)
	}
	return lineError(name, err.Error())
}

func lineError(name, msg string) error {
	// yaml quotes the offending value, newlines and all; an error stays one
	// line, and the line number is found only in a message of one line.
	msg = strings.ReplaceAll(msg, "\n", `\n`)
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &Error{File: name, Line: n, Msg: m[2]}
	}
	return &Error{File: name, Msg: strings.TrimPrefix(msg, "yaml: ")}
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// CheckKeys reports every mapping key in n that t (a struct, or pointer,
// slice or map of one) does not declare.
func CheckKeys(file string, n *yaml.Node, t reflect.Type) []error {
	return newChecker(file).check(n, t)
}

// checker walks a document once for CheckKeys and Parse.
type checker struct {
	file string
	// seen holds the anchored nodes already checked as a type. An alias
	// is a pointer to its anchor, not a copy: following every alias anew
	// would check lists of lists of aliases once per path through them:
	// 1.8 KB of YAML took a second, and each doubling eight times longer.
	seen   map[checked]bool
	visits int // nodes looked at, for the fuzz test's bound
}

type checked struct {
	n *yaml.Node
	t reflect.Type
}

func newChecker(file string) *checker { return &checker{file: file, seen: map[checked]bool{}} }

func (c *checker) check(n *yaml.Node, t reflect.Type) []error {
	c.visits++
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
		if c.seen[checked{n, t}] {
			return nil
		}
		c.seen[checked{n, t}] = true
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil // Decode reports the type error
		}
		var errs []error
		for _, e := range n.Content {
			errs = append(errs, c.check(e, t.Elem())...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var errs []error
		for i := 1; i < len(n.Content); i += 2 {
			errs = append(errs, c.check(n.Content[i], t.Elem())...)
		}
		return errs
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		fields := map[string]reflect.Type{}
		collectFields(t, fields)
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			ft, ok := fields[k.Value]
			if !ok {
				msg := fmt.Sprintf("unknown key %q", k.Value)
				if s := closest(k.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				errs = append(errs, &Error{File: c.file, Line: k.Line, Msg: msg})
				continue
			}
			errs = append(errs, c.check(n.Content[i+1], ft)...)
		}
		return errs
	}
	return nil
}

func collectFields(t reflect.Type, out map[string]reflect.Type) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			collectFields(ft, out)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
}

// closest returns the known key nearest to k, if it is near enough to be a
// likely typo.
func closest(k string, known map[string]reflect.Type) string {
	best, bestD := "", 3
	for name := range known {
		if d := distance(strings.ToLower(k), name); d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	return best
}

func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			c := 1
			if ra[i-1] == rb[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// Size is a byte count written as "64MiB", "1GiB", "500KB" or a plain number.
type Size int64

var sizeRE = regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B?|B)?\s*$`)

// ParseSize parses a Size.
func ParseSize(s string) (Size, error) {
	m := sizeRE.FindStringSubmatch(strings.ToUpper(s))
	if m == nil {
		return 0, fmt.Errorf("bad size %q: write a number with a unit, e.g. 512MiB or 2GiB", s)
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	mult := map[string]float64{"": 1, "B": 1,
		"K": 1 << 10, "KB": 1e3, "KI": 1 << 10, "KIB": 1 << 10,
		"M": 1 << 20, "MB": 1e6, "MI": 1 << 20, "MIB": 1 << 20,
		"G": 1 << 30, "GB": 1e9, "GI": 1 << 30, "GIB": 1 << 30,
		"T": 1 << 40, "TB": 1e12, "TI": 1 << 40, "TIB": 1 << 40}[m[2]]
	// Beyond int64 the conversion would wrap to a negative size, which a
	// limit check would then report as "too small".
	if f*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("bad size %q: too large; write at most 8388607TiB", s)
	}
	return Size(f * mult), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*s = v
	return nil
}

// String renders the size in binary units.
func (s Size) String() string {
	v := float64(s)
	for _, u := range []string{"B", "KiB", "MiB", "GiB"} {
		if v < 1024 {
			return strconv.FormatFloat(v, 'f', -1, 64) + u
		}
		v /= 1024
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "TiB"
}
