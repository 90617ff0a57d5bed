// Package sdnotify tells systemd about a service's state through the
// sd_notify protocol: readiness, reloading, stopping and watchdog pings, as
// datagrams to the socket named in NOTIFY_SOCKET. Outside systemd (no
// NOTIFY_SOCKET) every call does nothing.
package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// Messages of the protocol (sd_notify(3)).
const (
	Ready     = "READY=1"
	Reloading = "RELOADING=1"
	Stopping  = "STOPPING=1"
	Watchdog  = "WATCHDOG=1"
)

// Notify sends state to systemd. It returns nil when NOTIFY_SOCKET is unset.
func Notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] == '@' { // abstract namespace
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// ReloadingNow is the RELOADING message with the monotonic timestamp that
// systemd 253 and later expect beside it.
func ReloadingNow() string {
	var ts syscallTimespec
	clockMonotonic(&ts)
	return Reloading + "\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Sec*1e6+ts.Nsec/1e3, 10)
}

// WatchdogInterval is the interval systemd expects pings at (WatchdogSec=),
// or 0 when the watchdog is off or meant for another process.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond
}

// RunWatchdog pings systemd's watchdog at half its interval for as long as
// healthy returns nil, until ctx ends. A process whose healthy check hangs
// or fails stops pinging, and systemd restarts it (Restart=on-failure).
func RunWatchdog(ctx context.Context, healthy func(context.Context) error) {
	iv := WatchdogInterval()
	if iv == 0 {
		return
	}
	t := time.NewTicker(iv / 2)
	defer t.Stop()
	for {
		hctx, cancel := context.WithTimeout(ctx, iv/2)
		err := healthy(hctx)
		cancel()
		if err == nil {
			Notify(Watchdog)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
