// Command qz-central is the Qianzhi hub.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/qianzhi/qianzhi/central"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

func main() {
	stopProfile := cli.StartProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := central.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qz-central:", err)
		if errors.Is(err, cli.ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
