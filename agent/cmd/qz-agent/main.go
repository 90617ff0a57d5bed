// Command qz-agent is the Qianzhi front-end exchange agent.
package main

import (
	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

func main() { cli.Main("qz-agent", agent.Run) }
