package agent

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

// followCopy prints a copy's progress until it is done or stopped, or ctx
// ends (the copy goes on in the agent). On a terminal it draws one line
// that it redraws; otherwise it prints a line every few seconds.
func followCopy(ctx context.Context, cfg Config, req *api.Copy, w io.Writer, tty bool) error {
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return err
	}
	defer st.Close()
	v := st.view("src/" + req.Grant)
	var lastLine time.Time
	lastState := ""
	asked := time.Now()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		job, err := loadCopy(v, keyCopy)
		if err != nil {
			return err
		}
		if pending, err := loadCopy(v, keyCopyReq); err != nil {
			return err
		} else if pending != nil || job == nil || (job.ID != req.ID && !job.Active()) {
			if time.Since(asked) > 3*cfg.Poll && lastState != "unclaimed" {
				fmt.Fprintf(w, "copy %s is asked for; it starts when qz-agent runs (is the service up? systemctl status qz-agent)\n", req.ID)
				lastState = "unclaimed"
			}
		} else {
			if job.ID != req.ID && lastState == "" {
				fmt.Fprintf(w, "copy %s was already under way; following it\n", job.ID)
			}
			line := copyLine(job, time.Now())
			switch {
			case tty:
				fmt.Fprintf(w, "\r\033[K%s", line)
				if job.State != lastState && (job.State == api.CopyDone || job.State == api.CopyStopped) {
					fmt.Fprintln(w)
				}
			case job.State != lastState || time.Since(lastLine) >= 5*time.Second:
				fmt.Fprintln(w, line)
				lastLine = time.Now()
			}
			lastState = job.State
			switch job.State {
			case api.CopyDone:
				return nil
			case api.CopyStopped:
				return fmt.Errorf("copy %s stopped: %s", job.ID, job.Reason)
			}
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "the copy goes on in the agent; 'qz-agent copy status' shows it\n")
			return nil
		case <-t.C:
		}
	}
}

// copyLine renders a copy's progress: a bar, what moved, the rate and the
// time left.
func copyLine(c *api.Copy, now time.Time) string {
	unit, done, total := "rows", c.Rows, c.TotalRows
	if c.TotalRows == 0 && (c.TotalBytes > 0 || c.Files > 0) {
		unit, done, total = "bytes", c.Bytes, c.TotalBytes
	}
	end := now
	if !c.Finished.IsZero() {
		end = c.Finished
	}
	el := end.Sub(c.Started)
	frac := 0.0
	if total > 0 {
		frac = min(1, float64(done)/float64(total))
	}
	if c.State == api.CopySent || c.State == api.CopyDone {
		frac = 1
	}
	const width = 24
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	rate := 0.0
	if s := el.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	what := fmt.Sprintf("%s/%s %s", human(done, unit), human(total, unit), unit)
	if unit == "bytes" {
		what = fmt.Sprintf("%s/%s, %d files", human(done, unit), human(total, unit), c.Files)
	}
	line := fmt.Sprintf("%s [%s] %3.0f%%  %s  %s/s", c.ID, bar, frac*100, what, human(int64(rate), unit))
	switch c.State {
	case api.CopyRunning:
		if rate > 0 && total > done {
			line += "  ETA " + (time.Duration(float64(total-done)/rate) * time.Second).Round(time.Second).String()
		}
	case api.CopyWaiting:
		line += "  waiting: " + c.Reason
	case api.CopySent:
		line += fmt.Sprintf("  sent in %d batches; waiting for %s to apply batch %d", c.Batches, c.Consumer, c.LastSeq)
	case api.CopyDone:
		line += fmt.Sprintf("  done in %s: %s applied batch %d (receipt checked)", el.Round(100*time.Millisecond), c.Consumer, c.LastSeq)
	case api.CopyStopped:
		line += "  stopped: " + c.Reason
	}
	return line
}

// human renders n compactly: 1.5k rows, 12.3 MiB.
func human(n int64, unit string) string {
	f := float64(n)
	if unit == "bytes" {
		for _, u := range []string{"B", "KiB", "MiB", "GiB"} {
			if f < 1024 || u == "GiB" {
				if u == "B" {
					return fmt.Sprintf("%d B", n)
				}
				return fmt.Sprintf("%.1f %s", f, u)
			}
			f /= 1024
		}
	}
	switch {
	case f >= 1e6:
		return fmt.Sprintf("%.2fM", f/1e6)
	case f >= 1e4:
		return fmt.Sprintf("%.1fk", f/1e3)
	}
	return fmt.Sprintf("%d", n)
}

func printCopies(w io.Writer, cs []api.Copy) error {
	slices.SortFunc(cs, func(a, b api.Copy) int { return strings.Compare(b.ID, a.ID) })
	if len(cs) == 0 {
		fmt.Fprintln(w, "no copies yet: start one with qz-agent copy RESOURCE --to NODE")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COPY\tRESOURCE\tTO\tSTATE\tROWS\tFILES\tBYTES\tBATCHES\tSTARTED\tNOTE")
	for _, c := range cs {
		started := "-"
		if !c.Started.IsZero() {
			started = c.Started.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%s\t%d\t%s\t%s\n", c.ID, c.Resource, c.Consumer, c.State,
			c.Rows, c.TotalRows, c.Files, c.TotalFiles, human(c.Bytes, "bytes"), c.Batches, started, orDash(c.Reason))
	}
	return tw.Flush()
}
