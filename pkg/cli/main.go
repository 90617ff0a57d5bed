package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Main runs a binary's Run with a context that SIGINT and SIGTERM cancel,
// prints its error as one line prefixed with the binary's name, and exits
// with ExitCode's status.
func Main(binary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	stopProfile := StartProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, binary+":", err)
		os.Exit(ExitCode(err))
	}
}
