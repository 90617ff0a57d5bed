// Command qz-agent is the Qianzhi front-end exchange agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

func main() {
	stopProfile := cli.StartProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := agent.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qz-agent:", err)
		if errors.Is(err, cli.ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
