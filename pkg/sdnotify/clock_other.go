//go:build !linux

package sdnotify

import "time"

type syscallTimespec struct{ Sec, Nsec int64 }

var start = time.Now()

func clockMonotonic(ts *syscallTimespec) {
	d := time.Since(start)
	ts.Sec, ts.Nsec = int64(d/time.Second), int64(d%time.Second)
}
