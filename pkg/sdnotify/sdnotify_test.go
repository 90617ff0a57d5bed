package sdnotify

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen stands in for systemd: a datagram socket named by NOTIFY_SOCKET.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func read(t *testing.T, c *net.UnixConn, wait time.Duration) (string, bool) {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", false
		}
		t.Fatal(err)
	}
	return string(buf[:n]), true
}

func TestNotify(t *testing.T) {
	c := listen(t)
	if err := Notify(Ready); err != nil {
		t.Fatal(err)
	}
	if got, _ := read(t, c, 5*time.Second); got != "READY=1" {
		t.Fatalf("got %q, want READY=1", got)
	}
	if err := Notify(ReloadingNow()); err != nil {
		t.Fatal(err)
	}
	got, _ := read(t, c, 5*time.Second)
	if !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("got %q", got)
	}
}

func TestNotifyOutsideSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify(Ready); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent"))
	if err := Notify(Ready); err == nil {
		t.Fatal("a missing socket must be an error")
	}
}

func TestWatchdog(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if WatchdogInterval() != 200*time.Millisecond {
		t.Fatalf("interval %v", WatchdogInterval())
	}
	ctx, cancel := context.WithCancel(context.Background())
	sick := make(chan bool, 1)
	sick <- false
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunWatchdog(ctx, func(context.Context) error {
			s := <-sick
			sick <- s
			if s {
				return errors.New("wedged")
			}
			return nil
		})
	}()
	for i := 0; i < 3; i++ {
		if got, ok := read(t, c, 5*time.Second); !ok || got != "WATCHDOG=1" {
			t.Fatalf("ping %d: got %q, %v", i, got, ok)
		}
	}
	<-sick
	sick <- true
	read(t, c, 150*time.Millisecond) // one ping may have been on its way
	if got, ok := read(t, c, time.Second); ok {
		t.Fatalf("an unhealthy process pinged: %q", got)
	}
	cancel()
	<-done

	t.Setenv("WATCHDOG_PID", "1")
	if WatchdogInterval() != 0 {
		t.Fatal("a watchdog meant for another process must be ignored")
	}
}
