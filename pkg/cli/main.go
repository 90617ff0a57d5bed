package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Main runs a binary's Run with a context that SIGINT and SIGTERM cancel,
// prints its error as one line prefixed with the binary's name, and exits
// 2 for usage errors, 1 for other errors.
func Main(binary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	stopProfile := StartProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, binary+":", err)
		if errors.Is(err, ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
