package sdnotify

import "golang.org/x/sys/unix"

type syscallTimespec = unix.Timespec

func clockMonotonic(ts *unix.Timespec) { unix.ClockGettime(unix.CLOCK_MONOTONIC, ts) }
