package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/qianzhi/qianzhi/pkg/version"
)

// Exit codes of both binaries (documented in README.md).
const (
	ExitOK     = 0 // the command did what it was asked
	ExitFailed = 1 // it ran and failed: the message says why
	ExitUsage  = 2 // it was called wrongly: unknown command or flag, missing argument
	ExitConfig = 3 // the configuration file is missing, unreadable or invalid
)

// ErrConfig marks an error in the configuration file; main exits
// ExitConfig for it.
var ErrConfig = errors.New("configuration")

// ConfigError marks err as a configuration error, keeping its message.
func ConfigError(err error) error {
	if err == nil || errors.Is(err, ErrConfig) {
		return err
	}
	return configError{err}
}

type configError struct{ err error }

func (e configError) Error() string        { return e.err.Error() }
func (e configError) Unwrap() []error      { return []error{e.err, ErrConfig} }
func (e configError) Is(target error) bool { return target == ErrConfig }

// ExitCode is the exit status for err.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrUsage):
		return ExitUsage
	case errors.Is(err, ErrConfig):
		return ExitConfig
	}
	return ExitFailed
}

// NewRoot makes a binary's root command with what both share: --version,
// usage errors for unknown commands and flags (exit 2, before anything is
// opened), shell completion (the "completion" command cobra provides) and a
// hidden "man DIR" command that writes the man pages the packages install.
func NewRoot(binary, short, long string) *cobra.Command {
	root := &cobra.Command{
		Use:           binary,
		Short:         short,
		Long:          long,
		Version:       strings.TrimPrefix(version.String(binary), binary+" "),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE:          missingCommand,
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return Usagef("%v (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(&cobra.Command{
		Use:    "man DIR",
		Short:  "Write the man pages of every command to DIR",
		Hidden: true,
		Args:   ExactArgs(1, "DIR"),
		RunE: func(c *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			return doc.GenManTree(c.Root(), &doc.GenManHeader{Title: strings.ToUpper(binary), Section: "1", Source: "Qianzhi " + version.Version}, args[0])
		},
	})
	return root
}

// Group makes a command that only holds subcommands: called alone it
// prints its help and is a usage error; an unknown subcommand is refused.
func Group(use, short string, subs ...*cobra.Command) *cobra.Command {
	g := &cobra.Command{Use: use, Short: short, Args: noArgs, RunE: missingCommand}
	g.AddCommand(subs...)
	return g
}

func missingCommand(c *cobra.Command, args []string) error {
	c.SetOut(c.ErrOrStderr())
	c.Help()
	return Usagef("%s needs a command (see '%s --help')", c.CommandPath(), c.CommandPath())
}

// noArgs refuses words a group does not know, naming the closest command.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return Usagef("%s (see '%s --help')", msg, c.CommandPath())
}

// ExactArgs wants n positional arguments, named in want (e.g. "NODE_ID").
func ExactArgs(n int, want string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return Usagef("expected: %s %s (see '%s --help')", c.CommandPath(), want, c.CommandPath())
		}
		return nil
	}
}

// MaxArgs wants at most n positional arguments, named in want.
func MaxArgs(n int, want string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) > n {
			return Usagef("expected: %s %s (see '%s --help')", c.CommandPath(), want, c.CommandPath())
		}
		return nil
	}
}

// Execute runs root on args with ctx, writing to stdout and stderr, and
// returns the error to print (nil when help or the version was asked for).
func Execute(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) error {
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(os.Stdin)
	return root.ExecuteContext(ctx)
}

// MainCommand runs a binary whose commands are a cobra tree, as Main does
// for one with a Run function, with the exit codes above.
func MainCommand(binary string, newRoot func() *cobra.Command) {
	Main(binary, func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		return Execute(ctx, newRoot(), args, stdout, stderr)
	})
}

// HelpProblems walks every visible command under root, asks each for its
// --help, and lists what a user would miss: a one-line summary, an example
// for every command that runs, and each of its flags in its help. Both
// binaries' tests hold their trees to it.
func HelpProblems(root *cobra.Command) []string {
	var problems []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" && c.Parent() == root {
			return
		}
		path := c.CommandPath()
		if c.Short == "" {
			problems = append(problems, path+": no summary (Short)")
		}
		if !c.HasSubCommands() && c.Example == "" {
			problems = append(problems, path+": no example")
		}
		var out strings.Builder
		args := append(strings.Fields(path)[1:], "--help")
		err := Execute(context.Background(), root, args, &out, &out)
		root.SetArgs(nil)
		help := out.String()
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s --help: %v", path, err))
		case !strings.Contains(help, "Usage:"):
			problems = append(problems, path+" --help: no usage line")
		case c.Example != "" && !strings.Contains(help, "Examples:"):
			problems = append(problems, path+" --help: no examples")
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(help, "--"+f.Name) {
				problems = append(problems, fmt.Sprintf("%s --help: flag --%s not shown", path, f.Name))
			}
			if f.Usage == "" {
				problems = append(problems, fmt.Sprintf("%s: flag --%s has no description", path, f.Name))
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	return problems
}
