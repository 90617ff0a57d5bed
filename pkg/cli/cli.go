// Package cli holds the small pieces of command-line handling both binaries
// share: flags interleaved with positional arguments, and usage errors.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// ErrUsage marks an error in how a command was called; main prints usage
// hints for it and exits 2.
var ErrUsage = errors.New("usage")

// Usagef returns a usage error with a message.
func Usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// Parse parses args with fs, allowing flags after positional arguments
// ("node add ID --name X"), and returns the positional arguments.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, Usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// Want checks the number of positional arguments.
func Want(pos []string, n int, usage string) error {
	if len(pos) != n {
		return Usagef("expected: %s", usage)
	}
	return nil
}

// Hoist moves a leading "--config FILE" (or "-config=FILE") behind the
// command words, so both "qz-agent --config F run" and
// "qz-agent run --config F" work.
func Hoist(args []string) []string {
	var lead []string
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		name := strings.TrimLeft(args[0], "-")
		if strings.Contains(name, "=") || len(args) == 1 {
			lead, args = append(lead, args[0]), args[1:]
			continue
		}
		lead, args = append(lead, args[0], args[1]), args[2:]
	}
	return append(append([]string{}, args...), lead...)
}

// Pairs is a repeatable flag of KEY=VALUE pairs, e.g. --mask 身份证号=idcard.
type Pairs map[string]string

func (p Pairs) String() string {
	var s []string
	for k, v := range p {
		s = append(s, k+"="+v)
	}
	return strings.Join(s, ",")
}

// Set adds one KEY=VALUE.
func (p Pairs) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(k) == "" || strings.TrimSpace(v) == "" {
		return fmt.Errorf("%q: want FIELD=RULE, e.g. 身份证号=idcard", s)
	}
	p[strings.TrimSpace(k)] = strings.TrimSpace(v)
	return nil
}

// List splits a comma-separated flag value, dropping empty items.
func List(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
