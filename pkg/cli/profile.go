package cli

import (
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// StartProfile writes a CPU profile to the file named by QZ_CPUPROFILE, if
// set, until the returned stop function runs; %p in the name stands for the
// process ID, so that several processes can share the setting. It is for
// measuring a real process (make bench, a slow site), not for everyday use.
func StartProfile() (stop func()) {
	path := os.Getenv("QZ_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
