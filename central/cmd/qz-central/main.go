// Command qz-central is the Qianzhi hub.
package main

import (
	"github.com/qianzhi/qianzhi/central"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

func main() { cli.Main("qz-central", central.Run) }
