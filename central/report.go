package central

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

// exportAudit writes the audit records of the days from..to (China time,
// inclusive; either may be empty) as JSON lines or CSV. Each record keeps
// its sequence number and both hashes, so an export can be checked against
// the chain later.
func exportAudit(recs []store.AuditRecord, from, to, format string, w io.Writer) error {
	lo, hi, err := dayRange(from, to)
	if err != nil {
		return err
	}
	type rec struct {
		Seq     int64     `json:"seq"`
		At      time.Time `json:"at"`
		Actor   string    `json:"actor"`
		Action  string    `json:"action"`
		Subject string    `json:"subject"`
		Detail  string    `json:"detail"`
		Prev    string    `json:"prev"`
		Hash    string    `json:"hash"`
	}
	var cw *csv.Writer
	enc := json.NewEncoder(w)
	switch format {
	case "jsonl", "":
	case "csv":
		cw = csv.NewWriter(w)
		cw.Write([]string{"seq", "at", "actor", "action", "subject", "detail", "prev", "hash"})
	default:
		return cli.Usagef("--format %q: use jsonl or csv", format)
	}
	for _, r := range recs {
		if r.At.Before(lo) || !r.At.Before(hi) {
			continue
		}
		if cw != nil {
			cw.Write([]string{strconv.FormatInt(r.Seq, 10), r.At.UTC().Format(time.RFC3339Nano), r.Actor, r.Action, r.Subject, r.Detail, r.Prev, r.Hash})
			continue
		}
		if err := enc.Encode(rec{r.Seq, r.At.UTC(), r.Actor, r.Action, r.Subject, r.Detail, r.Prev, r.Hash}); err != nil {
			return err
		}
	}
	if cw != nil {
		cw.Flush()
		return cw.Error()
	}
	return nil
}

// dayRange turns --from and --to days (China time, inclusive) into [lo, hi).
func dayRange(from, to string) (time.Time, time.Time, error) {
	lo, hi := time.Time{}, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	parse := func(flag, v string) (time.Time, error) {
		t, err := time.ParseInLocation(time.DateOnly, v, calendar.CST)
		if err != nil {
			return t, cli.Usagef("--%s %q: want a day such as 2026-11-01", flag, v)
		}
		return t, nil
	}
	var err error
	if from != "" {
		if lo, err = parse("from", from); err != nil {
			return lo, hi, err
		}
	}
	if to != "" {
		if hi, err = parse("to", to); err != nil {
			return lo, hi, err
		}
		hi = hi.AddDate(0, 0, 1)
	}
	if !hi.After(lo) {
		return lo, hi, cli.Usagef("--to %s is before --from %s", to, from)
	}
	return lo, hi, nil
}

// printCalendar shows a year's days off and working weekends.
func printCalendar(cfg Config, pos []string, w io.Writer) error {
	c, err := cfg.Calendar()
	if err != nil {
		return err
	}
	year := time.Now().In(calendar.CST).Year()
	if len(pos) > 0 {
		if year, err = strconv.Atoi(pos[0]); err != nil || year < 1949 || year > 9999 {
			return cli.Usagef("qz-central calendar [YEAR]: %q is not a year", pos[0])
		}
	}
	if !c.Covered(year) {
		fmt.Fprintf(w, "%d: no official calendar (have %v); deadlines count plain weekends.\nAdd %d.yaml to %s (format: configs/holidays/2026.yaml).\n", year, c.Years(), year, cfg.HolidaysDir)
		return nil
	}
	fmt.Fprintf(w, "%d: %s\n", year, c.Source(year))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	workdays := 0
	for d := (calendar.Date{Y: year, M: 1, D: 1}); d.Y == year; d = d.AddDays(1) {
		ok, why := c.IsWorkday(d)
		weekend := d.Weekday() == time.Saturday || d.Weekday() == time.Sunday
		switch {
		case ok:
			workdays++
			if weekend {
				fmt.Fprintf(tw, "%s\t%s\tworking day (调休)\n", d, d.Weekday())
			}
		case why != "weekend":
			fmt.Fprintf(tw, "%s\t%s\toff: %s\n", d, d.Weekday(), why)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "%d working days\n", workdays)
	return nil
}
