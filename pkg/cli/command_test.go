package cli

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// testRoot is a small tree in the shape both binaries use; ran records
// which command ran.
func testRoot(ran *string) *cobra.Command {
	root := NewRoot("qz-x", "a test binary", "")
	var limit int
	add := &cobra.Command{
		Use: "add ID", Short: "add a node", Example: "  qz-x node add dept-a", Args: ExactArgs(1, "ID"),
		RunE: func(c *cobra.Command, args []string) error { *ran = "node add " + args[0]; return nil },
	}
	add.Flags().IntVar(&limit, "limit", 10, "at most this many")
	root.AddCommand(Group("node", "manage nodes", add))
	root.AddCommand(&cobra.Command{
		Use: "check", Short: "check the configuration", Example: "  qz-x check", Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error { return ConfigError(errors.New("config.yaml: bad")) },
	})
	return root
}

func TestCommandExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string // in the error or the output
	}{
		{[]string{"node", "add", "dept-a"}, ExitOK, ""},
		{[]string{"node", "add"}, ExitUsage, "expected: qz-x node add ID"},
		{[]string{"node", "add", "dept-a", "--json"}, ExitUsage, "unknown flag: --json"},
		{[]string{"node", "ad"}, ExitUsage, `unknown command "ad" for "qz-x node"`},
		{[]string{"bogus"}, ExitUsage, `unknown command "bogus"`},
		{[]string{"nod"}, ExitUsage, `did you mean "node"?`},
		{[]string{}, ExitUsage, "needs a command"},
		{[]string{"node"}, ExitUsage, "needs a command"},
		{[]string{"check"}, ExitConfig, "config.yaml: bad"},
		{[]string{"--version"}, ExitOK, "qz-x dev"},
		{[]string{"node", "add", "--help"}, ExitOK, "at most this many"},
	} {
		var ran string
		var out strings.Builder
		err := Execute(context.Background(), testRoot(&ran), tc.args, &out, &out)
		if got := ExitCode(err); got != tc.code {
			t.Errorf("%q: exit %d (%v), want %d", tc.args, got, err, tc.code)
		}
		text := out.String()
		if err != nil {
			text += err.Error()
		}
		if !strings.Contains(text, tc.want) {
			t.Errorf("%q: %q lacks %q", tc.args, text, tc.want)
		}
		if tc.code != ExitOK && ran != "" {
			t.Errorf("%q: refused, yet %q ran", tc.args, ran)
		}
	}
}

func TestHelpProblems(t *testing.T) {
	var ran string
	if p := HelpProblems(testRoot(&ran)); len(p) > 0 {
		t.Errorf("a complete tree has problems: %q", p)
	}
	root := testRoot(&ran)
	root.AddCommand(&cobra.Command{Use: "bare", RunE: func(*cobra.Command, []string) error { return nil }})
	p := strings.Join(HelpProblems(root), "\n")
	for _, want := range []string{"qz-x bare: no summary", "qz-x bare: no example"} {
		if !strings.Contains(p, want) {
			t.Errorf("problems lack %q:\n%s", want, p)
		}
	}
}
