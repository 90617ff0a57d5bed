package throttle

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	cst := time.FixedZone("CST", 8*3600)
	at := func(h, m int) time.Time { return time.Date(2026, 11, 23, h, m, 0, 0, cst) }
	for _, c := range []struct {
		win  string
		t    time.Time
		open bool
		next time.Time
	}{
		{"22:00-06:00", at(23, 0), true, at(23, 0)},
		{"22:00-06:00", at(3, 0), true, at(3, 0)},
		{"22:00-06:00", at(6, 0), false, at(22, 0)},
		{"22:00-06:00", at(12, 0), false, at(22, 0)},
		{"01:00-05:00", at(12, 0), false, time.Date(2026, 11, 24, 1, 0, 0, 0, cst)},
		{"01:00-05:00", at(1, 0), true, at(1, 0)},
		{"9:30:15-10:00", at(9, 30), false, at(9, 30).Add(15 * time.Second)},
	} {
		w, err := ParseWindow(c.win)
		if err != nil {
			t.Fatal(err)
		}
		open, next := w.Open(c.t)
		if open != c.open || !next.Equal(c.next) {
			t.Errorf("%s at %s: open %v next %s, want %v %s", c.win, c.t.Format("15:04"), open, next, c.open, c.next)
		}
	}
	for _, bad := range []string{"22-06", "25:00-06:00", "22:00-06:60", "22:00", "22:00-22:00", "10pm-6am"} {
		if _, err := ParseWindow(bad); err == nil || !strings.Contains(err.Error(), "window") {
			t.Errorf("ParseWindow(%q) = %v, want an error naming the window", bad, err)
		}
	}
	if w, _ := ParseWindow(""); !w.IsZero() {
		t.Error("an empty window should be always open")
	}
}

func TestReaderLimitsRate(t *testing.T) {
	const limit = 200 << 10
	data := make([]byte, 100<<10)
	start := time.Now()
	n, err := io.Copy(io.Discard, Reader(context.Background(), bytes.NewReader(data), New(limit)))
	if err != nil || n != int64(len(data)) {
		t.Fatal(n, err)
	}
	// 100 KiB at 200 KiB/s with a 20 KiB burst takes about 0.4 s.
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("100KiB at 200KiB/s took %s: the limit did not hold", el)
	}
	if r := Reader(context.Background(), bytes.NewReader(data), nil, nil); r == nil {
		t.Fatal("nil reader")
	}
}
