package calendar

import (
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/qianzhi/qianzhi/configs"
)

func official(t *testing.T) *Calendar {
	t.Helper()
	c, err := Load(configs.Holidays)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func day(s string) Date {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return DateOf(time.Date(t.Year(), t.Month(), t.Day(), 12, 0, 0, 0, CST))
}

// TestOfficial2026 checks the shipped file against the State Council's
// notice, day by day for the days it changes.
func TestOfficial2026(t *testing.T) {
	c := official(t)
	if !c.Covered(2026) || c.Covered(2027) {
		t.Fatalf("covered years: %v", c.Years())
	}
	offRanges := [][2]string{
		{"2026-01-01", "2026-01-03"}, {"2026-02-15", "2026-02-23"}, {"2026-04-04", "2026-04-06"},
		{"2026-05-01", "2026-05-05"}, {"2026-06-19", "2026-06-21"}, {"2026-09-25", "2026-09-27"},
		{"2026-10-01", "2026-10-07"},
	}
	off := map[Date]bool{}
	for _, r := range offRanges {
		for d := day(r[0]); !d.Time().After(day(r[1]).Time()); d = d.AddDays(1) {
			off[d] = true
		}
	}
	work := map[Date]bool{}
	for _, s := range []string{"2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"} {
		work[day(s)] = true
	}
	workdays := 0
	for d := day("2026-01-01"); d.Y == 2026; d = d.AddDays(1) {
		want := !off[d] && (work[d] || (d.Weekday() != time.Saturday && d.Weekday() != time.Sunday))
		got, why := c.IsWorkday(d)
		if got != want {
			t.Errorf("%s (%s): working day %v (%s), want %v", d, d.Weekday(), got, why, want)
		}
		if got {
			workdays++
		}
	}
	// 2026 has 261 weekdays; the notice takes 19 of them off (holidays on
	// weekdays) and adds 6 weekend days: 248 working days.
	if workdays != 248 {
		t.Errorf("%d working days in 2026, want 248", workdays)
	}
	if ok, why := c.IsWorkday(day("2026-10-01")); ok || !strings.Contains(why, "国庆节") {
		t.Errorf("National Day: %v %q", ok, why)
	}
}

func TestDeadline(t *testing.T) {
	c := official(t)
	at := func(s string) time.Time {
		t, err := time.ParseInLocation("2006-01-02 15:04", s, CST)
		if err != nil {
			panic(err)
		}
		return t
	}
	for _, tc := range []struct {
		start string
		n     int
		want  string // the last day
	}{
		{"2026-11-23 10:00", 2, "2026-11-25"}, // Monday: Tuesday, Wednesday
		{"2026-11-20 16:00", 2, "2026-11-24"}, // Friday: over the weekend
		{"2026-09-30 09:00", 2, "2026-10-09"}, // across National Day: Oct 8 and 9
		{"2026-09-30 09:00", 3, "2026-10-10"}, // ... and the working Saturday after it
		{"2026-02-13 09:00", 1, "2026-02-14"}, // a working Saturday before Spring Festival
		{"2026-02-13 09:00", 5, "2026-02-27"}, // across Spring Festival: 14, 24, 25, 26, 27
		{"2026-09-18 09:00", 1, "2026-09-20"}, // Friday: Saturday off, Sunday a working day
		{"2026-11-23 23:59", 0, "2026-11-23"}, // no days: the end of this one
		{"2026-11-22 17:00", 1, "2026-11-23"}, // from a Sunday
	} {
		got := c.Deadline(at(tc.start), tc.n)
		want := day(tc.want).AddDays(1).Time()
		if !got.Equal(want) {
			t.Errorf("%s + %d working days: deadline %s, want the end of %s", tc.start, tc.n, got.In(CST).Format(time.DateTime), tc.want)
		}
	}
	// Midnight in UTC is already the next morning in Beijing.
	utc := time.Date(2026, 11, 22, 17, 0, 0, 0, time.UTC) // 2026-11-23 01:00 CST, a Monday
	if got := c.Deadline(utc, 1); !got.Equal(day("2026-11-24").AddDays(1).Time()) {
		t.Errorf("deadline from %s: %s", utc, got.In(CST))
	}
}

func TestWorkdaysLate(t *testing.T) {
	c := official(t)
	dl := c.Deadline(time.Date(2026, 9, 28, 9, 0, 0, 0, CST), 2) // Mon: due by the end of Wed Sep 30
	for _, tc := range []struct {
		at   time.Time
		want int
	}{
		{time.Date(2026, 9, 30, 23, 0, 0, 0, CST), 0},
		{time.Date(2026, 10, 5, 9, 0, 0, 0, CST), 1},  // late, though no working day has passed
		{time.Date(2026, 10, 8, 9, 0, 0, 0, CST), 1},  // the first working day after
		{time.Date(2026, 10, 10, 9, 0, 0, 0, CST), 3}, // Oct 8, 9 and the working Saturday
	} {
		if got := c.WorkdaysLate(dl, tc.at); got != tc.want {
			t.Errorf("at %s: %d working days late, want %d", tc.at, got, tc.want)
		}
	}
}

// TestOperatorAddsAYear loads an operator's 2027 file beside the built-in
// calendar, and a corrected 2026 that replaces the built-in one.
func TestOperatorAddsAYear(t *testing.T) {
	dir := fstest.MapFS{
		"2027.yaml": {Data: []byte("year: 2027\nsource: test\nholidays:\n  - name: 元旦\n    off: [2027-01-01]\n    work: [2027-01-02]\n")},
		"2026.yaml": {Data: []byte("year: 2026\nholidays:\n  - name: 只有一天\n    off: [2026-03-02]\n")},
	}
	c, err := Load(configs.Holidays, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Covered(2027) {
		t.Fatal("2027 not covered")
	}
	if ok, _ := c.IsWorkday(day("2027-01-01")); ok {
		t.Error("2027-01-01 should be off")
	}
	if ok, _ := c.IsWorkday(day("2027-01-02")); !ok {
		t.Error("Saturday 2027-01-02 should be a working day")
	}
	if ok, _ := c.IsWorkday(day("2026-10-01")); !ok {
		t.Error("the replaced 2026 file no longer lists National Day")
	}
	if ok, _ := c.IsWorkday(day("2026-03-02")); ok {
		t.Error("the replacing 2026 file's day off is not off")
	}
	// A year without a file counts plain weekends.
	if ok, _ := c.IsWorkday(day("2028-01-03")); !ok || c.Covered(2028) {
		t.Error("2028: a Monday without a calendar is a working day, and not covered")
	}
}

func TestBadFiles(t *testing.T) {
	for name, tc := range map[string]struct{ file, body, want string }{
		"weekday made working": {"2027.yaml", "year: 2027\nholidays:\n  - name: x\n    off: [2027-01-01]\n    work: [2027-01-04]\n", "only a Saturday or Sunday"},
		"wrong file name":      {"27.yaml", "year: 2027\nholidays:\n  - name: x\n    off: [2027-01-01]\n", "name the file 2027.yaml"},
		"bad date":             {"2027.yaml", "year: 2027\nholidays:\n  - name: x\n    off: [2027-13-01]\n", "not a date"},
		"unknown key":          {"2027.yaml", "year: 2027\nholiday:\n  - name: x\n", "holiday"},
		"overlap":              {"2027.yaml", "year: 2027\nholidays:\n  - name: a\n    off: [2027-01-01, 2027-01-03]\n  - name: b\n    off: [2027-01-03]\n", "off for both a and b"},
		"backwards range":      {"2027.yaml", "year: 2027\nholidays:\n  - name: a\n    off: [2027-01-03, 2027-01-01]\n", "not a range"},
		"no holidays":          {"2027.yaml", "year: 2027\n", "no holidays"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(fstest.MapFS{tc.file: {Data: []byte(tc.body)}})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
				t.Fatalf("got %v, want an error naming %s and saying %q", err, tc.file, tc.want)
			}
		})
	}
}
