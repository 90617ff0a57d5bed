// Package calendar counts working days on the official holiday calendar of
// mainland China, for the deadlines the regulations set in working days
// (工作日): hub review within 2, provider review within 5, feedback answers
// within a configurable number.
//
// A year's calendar is a YAML file (configs/holidays/2026.yaml is the
// model): the days off, as inclusive ranges, and the weekend days that are
// working days (调休上班). Every other Saturday and Sunday is off and every
// other weekday is a working day. The 2026 calendar is built in; an operator
// adds a year by dropping its file into the hub's holidays folder, without a
// new release. A year without a file counts plain weekends, and Covered
// says so, so that reports can flag deadlines computed without it.
//
// Days are calendar days in China Standard Time (UTC+8), whatever the zone
// of the machine.
package calendar

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// CST is China Standard Time, in which days begin and end.
var CST = time.FixedZone("CST", 8*3600)

// Date is a calendar day.
type Date struct{ Y, M, D int }

func (d Date) String() string { return fmt.Sprintf("%04d-%02d-%02d", d.Y, d.M, d.D) }

// Time is the start of the day in CST.
func (d Date) Time() time.Time { return time.Date(d.Y, time.Month(d.M), d.D, 0, 0, 0, 0, CST) }

// DateOf is the CST day of t.
func DateOf(t time.Time) Date {
	t = t.In(CST)
	return Date{t.Year(), int(t.Month()), t.Day()}
}

// AddDays moves d by n calendar days.
func (d Date) AddDays(n int) Date { return DateOf(d.Time().AddDate(0, 0, n)) }

// Weekday of the day.
func (d Date) Weekday() time.Weekday { return d.Time().Weekday() }

// UnmarshalYAML reads 2006-01-02.
func (d *Date) UnmarshalYAML(n *yaml.Node) error {
	t, err := time.Parse(time.DateOnly, n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a date (want 2006-01-02)", n.Line, n.Value)
	}
	*d = Date{t.Year(), int(t.Month()), t.Day()}
	return nil
}

// file is one year's calendar as written.
type file struct {
	Year     int    `yaml:"year"`
	Source   string `yaml:"source"`
	Holidays []struct {
		Name string `yaml:"name"`
		Off  []Date `yaml:"off"`
		Work []Date `yaml:"work"`
	} `yaml:"holidays"`
}

// Calendar knows the days off and the working weekends of some years.
type Calendar struct {
	years map[int]*year
}

// year is what one file says.
type year struct {
	file, source string
	off, work    map[Date]string // holiday names
}

// New returns a calendar of plain weekends, covering no year.
func New() *Calendar { return &Calendar{years: map[int]*year{}} }

// Load reads every *.yaml file of the given folders in order; a year found
// again in a later folder replaces the earlier one (an operator's corrected
// file replaces the built-in one). Every problem is reported with its file.
func Load(dirs ...fs.FS) (*Calendar, error) {
	c := New()
	var errs []error
	for _, dir := range dirs {
		names, err := fs.Glob(dir, "*.yaml")
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			b, err := fs.ReadFile(dir, name)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := c.add(name, b); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return c, errors.Join(errs...)
}

// add parses one year's file into c, replacing that year if present.
func (c *Calendar) add(name string, b []byte) error {
	var f file
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return fmt.Errorf("holiday calendar %s: %w", name, err)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("holiday calendar %s: "+format, append([]any{name}, args...)...)
	}
	if base := strings.TrimSuffix(path.Base(name), ".yaml"); base != fmt.Sprint(f.Year) {
		return fail("year %d in a file named %s: name the file %d.yaml", f.Year, path.Base(name), f.Year)
	}
	if len(f.Holidays) == 0 {
		return fail("no holidays listed")
	}
	off, work := map[Date]string{}, map[Date]string{}
	for _, h := range f.Holidays {
		if h.Name == "" {
			return fail("a holiday without a name")
		}
		switch len(h.Off) {
		case 1:
			h.Off = append(h.Off, h.Off[0])
		case 2:
		default:
			return fail("%s: off must be [first, last] (or one day)", h.Name)
		}
		first, last := h.Off[0], h.Off[1]
		if last.Time().Before(first.Time()) || last.Time().Sub(first.Time()) > 31*24*time.Hour {
			return fail("%s: off %s to %s is not a range of at most a month", h.Name, first, last)
		}
		for d := first; !d.Time().After(last.Time()); d = d.AddDays(1) {
			if prev, dup := off[d]; dup {
				return fail("%s is off for both %s and %s", d, prev, h.Name)
			}
			off[d] = h.Name
		}
		for _, d := range h.Work {
			if wd := d.Weekday(); wd != time.Saturday && wd != time.Sunday {
				return fail("%s: %s is a %s; only a Saturday or Sunday can be made a working day", h.Name, d, wd)
			}
			if _, clash := off[d]; clash {
				return fail("%s: %s is both off and a working day", h.Name, d)
			}
			work[d] = h.Name
		}
	}
	for _, ds := range []map[Date]string{off, work} {
		for d := range ds {
			if d.Y < f.Year-1 || d.Y > f.Year+1 {
				return fail("%s is far from year %d", d, f.Year)
			}
		}
	}
	c.years[f.Year] = &year{file: name, source: f.Source, off: off, work: work}
	return nil
}

// Covered reports whether the calendar has the year's official file.
func (c *Calendar) Covered(year int) bool { _, ok := c.years[year]; return ok }

// Years lists the covered years.
func (c *Calendar) Years() []int {
	var ys []int
	for y := range c.years {
		ys = append(ys, y)
	}
	slices.Sort(ys)
	return ys
}

// Source is the official source a year's file names.
func (c *Calendar) Source(y int) string {
	if f := c.years[y]; f != nil {
		return f.source
	}
	return ""
}

// IsWorkday reports whether d is a working day, and why not.
func (c *Calendar) IsWorkday(d Date) (bool, string) {
	// A holiday across New Year is listed in either year's file.
	for _, y := range []int{d.Y, d.Y - 1, d.Y + 1} {
		f := c.years[y]
		if f == nil {
			continue
		}
		if n, ok := f.off[d]; ok {
			return false, n
		}
		if _, ok := f.work[d]; ok {
			return true, ""
		}
	}
	switch d.Weekday() {
	case time.Saturday, time.Sunday:
		return false, "weekend"
	}
	return true, ""
}

// Deadline is the end of the n-th working day after the day of t (the day
// of t itself does not count): a step started on a Friday with 2 working
// days has until the end of Tuesday, or later across a holiday. The result
// is midnight CST at the end of that day.
func (c *Calendar) Deadline(t time.Time, n int) time.Time {
	d := DateOf(t)
	for left := n; left > 0; {
		d = d.AddDays(1)
		if ok, _ := c.IsWorkday(d); ok {
			left--
		}
	}
	return d.AddDays(1).Time()
}

// WorkdaysLate is how many working days after the deadline t falls: 0 if t
// is before it, 1 if t is in the first working day after it, and so on.
func (c *Calendar) WorkdaysLate(deadline, t time.Time) int {
	if t.Before(deadline) {
		return 0
	}
	n := 0
	for d := DateOf(deadline); !d.Time().After(t); d = d.AddDays(1) {
		if ok, _ := c.IsWorkday(d); ok {
			n++
		}
	}
	return max(n, 1)
}
