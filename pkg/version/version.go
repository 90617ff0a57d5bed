// Package version reports the build's version, set at link time with
// -ldflags "-X github.com/qianzhi/qianzhi/pkg/version.Version=…".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the release version; "dev" in untagged builds.
var Version = "dev"

// String is the one-line version report of both binaries.
func String(binary string) string {
	rev := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " " + s.Value[:12]
			}
		}
	}
	return fmt.Sprintf("%s %s%s (%s, %s/%s)", binary, Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
