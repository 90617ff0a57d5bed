// Package throttle bounds how fast and when a department's data leaves its
// server: bytes and rows per second, and a daily time window (for example
// 22:00-06:00) outside which full copies pause and resume by themselves.
package throttle

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"time"

	"golang.org/x/time/rate"
	"gopkg.in/yaml.v3"

	"github.com/qianzhi/qianzhi/pkg/config"
)

// Limits is the limits: block of an agent or of one resource. Zero values
// mean no limit.
type Limits struct {
	// BytesPerSecond bounds the bytes uploaded to the hub (after
	// compression: what the link carries).
	BytesPerSecond config.Size `yaml:"bytes_per_second"`
	// RowsPerSecond bounds the rows extracted from a table.
	RowsPerSecond int64 `yaml:"rows_per_second"`
	// Window is when full copies may run, in the server's local time.
	Window Window `yaml:"window"`
}

// Validate checks the limits.
func (l *Limits) Validate() error {
	if l.BytesPerSecond < 0 || (l.BytesPerSecond > 0 && l.BytesPerSecond < 1024) {
		return fmt.Errorf("limits.bytes_per_second %d is too small: at least 1KiB (or leave it out for no limit)", l.BytesPerSecond)
	}
	if l.RowsPerSecond < 0 {
		return fmt.Errorf("limits.rows_per_second %d must not be negative", l.RowsPerSecond)
	}
	return nil
}

// Window is a daily span of local time, "HH:MM-HH:MM" (seconds optional);
// it may run past midnight. The zero Window is always open.
type Window struct {
	from, to int // seconds after midnight
	set      bool
}

var windowRE = regexp.MustCompile(`^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*-\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$`)

// ParseWindow parses "22:00-06:00"; "" is the always-open window.
func ParseWindow(s string) (Window, error) {
	if s == "" {
		return Window{}, nil
	}
	m := windowRE.FindStringSubmatch(s)
	bad := fmt.Errorf("window %q: want HH:MM-HH:MM in the server's local time, e.g. 22:00-06:00", s)
	if m == nil {
		return Window{}, bad
	}
	at := func(h, mi, se string) (int, bool) {
		hh, _ := strconv.Atoi(h)
		mm, _ := strconv.Atoi(mi)
		ss := 0
		if se != "" {
			ss, _ = strconv.Atoi(se)
		}
		return hh*3600 + mm*60 + ss, hh < 24 && mm < 60 && ss < 60
	}
	from, ok1 := at(m[1], m[2], m[3])
	to, ok2 := at(m[4], m[5], m[6])
	if !ok1 || !ok2 {
		return Window{}, bad
	}
	if from == to {
		return Window{}, fmt.Errorf("window %q is empty: its start and end are the same (leave it out to allow copies at any time)", s)
	}
	return Window{from: from, to: to, set: true}, nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (w *Window) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseWindow(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*w = v
	return nil
}

// IsZero reports whether the window is always open.
func (w Window) IsZero() bool { return !w.set }

// String renders the window as written.
func (w Window) String() string {
	if !w.set {
		return "always"
	}
	f := func(s int) string {
		if s%60 != 0 {
			return fmt.Sprintf("%02d:%02d:%02d", s/3600, s/60%60, s%60)
		}
		return fmt.Sprintf("%02d:%02d", s/3600, s/60%60)
	}
	return f(w.from) + "-" + f(w.to)
}

// Open reports whether t lies in the window, and if not, when it opens next.
func (w Window) Open(t time.Time) (bool, time.Time) {
	if !w.set {
		return true, t
	}
	mid := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, t.Location())
	s := int(t.Sub(mid) / time.Second)
	in := s >= w.from && s < w.to
	if w.from > w.to { // past midnight
		in = s >= w.from || s < w.to
	}
	if in {
		return true, t
	}
	next := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, w.from, 0, t.Location())
	if !next.After(t) {
		next = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, w.from, 0, t.Location())
	}
	return false, next
}

// Limiter bounds a rate; a nil Limiter does not limit.
type Limiter struct{ l *rate.Limiter }

// New returns a limiter of perSecond units (nil for 0: no limit). Its
// burst is a tenth of a second's worth, so a measured rate stays close to
// the limit over any few seconds.
func New(perSecond int64) *Limiter {
	if perSecond <= 0 {
		return nil
	}
	return &Limiter{rate.NewLimiter(rate.Limit(perSecond), int(max(1, perSecond/10)))}
}

// Wait blocks until n units may pass, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int64) error {
	if l == nil {
		return nil
	}
	b := int64(l.l.Burst())
	for n > 0 {
		k := min(n, b)
		if err := l.l.WaitN(ctx, int(k)); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// Burst is the most Wait lets through at once (0 without a limit).
func (l *Limiter) Burst() int64 {
	if l == nil {
		return 0
	}
	return int64(l.l.Burst())
}

// WaitAll waits on each limiter in turn.
func WaitAll(ctx context.Context, n int64, ls ...*Limiter) error {
	for _, l := range ls {
		if err := l.Wait(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// Reader limits reads from r by every limiter given.
func Reader(ctx context.Context, r io.Reader, ls ...*Limiter) io.Reader {
	var active []*Limiter
	step := int64(256 << 10)
	for _, l := range ls {
		if l != nil {
			active = append(active, l)
			step = min(step, l.Burst())
		}
	}
	if len(active) == 0 {
		return r
	}
	return &reader{ctx: ctx, r: r, ls: active, step: int(max(step, 1))}
}

type reader struct {
	ctx  context.Context
	r    io.Reader
	ls   []*Limiter
	step int
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) > r.step {
		p = p[:r.step]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := WaitAll(r.ctx, int64(n), r.ls...); werr != nil {
			return n, werr
		}
	}
	return n, err
}
