package central

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

// staleAfter is how old a resource's newest batch may be for its declared
// update frequency before the report calls it stale.
var staleAfter = map[string]time.Duration{
	"realtime": time.Hour, "hourly": 2 * time.Hour, "daily": 48 * time.Hour, "weekly": 8 * 24 * time.Hour,
	"monthly": 32 * 24 * time.Hour, "quarterly": 93 * 24 * time.Hour, "yearly": 366 * 24 * time.Hour,
}

// deptLine is one department's figures in the evaluation report (考核).
type deptLine struct {
	Node, Name string
	// As provider.
	Resources, InCatalog    int
	Stale                   []string
	Batches, Rows, Bytes    int64
	Applied                 int64 // batches its consumers confirmed with a receipt
	Consumers               int   // departments holding an active grant on its data
	Decided, DecidedLate    int   // its decisions on applications
	DecisionsOverdue        int
	Answered, AnsweredLate  int // its answers to feedback
	FeedbackOverdue         int
	Applications, GrantsNow int // as consumer
}

// departmentReport gathers each department's figures.
func departmentReport(ctx context.Context, st store.Store, now time.Time) ([]deptLine, error) {
	nodes, err := st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	byNode := map[string]*deptLine{}
	var out []*deptLine
	for _, n := range nodes {
		l := &deptLine{Node: n.ID, Name: n.Name}
		byNode[n.ID] = l
		out = append(out, l)
	}
	get := func(id string) *deptLine {
		if l := byNode[id]; l != nil {
			return l
		}
		return &deptLine{} // a node removed since: counted nowhere
	}
	rs, err := st.Resources(ctx)
	if err != nil {
		return nil, err
	}
	cat, err := st.CatalogApproved(ctx)
	if err != nil {
		return nil, err
	}
	freq := map[string]string{}
	for _, v := range cat {
		freq[v.Entry.Resource] = v.Entry.Frequency
		get(v.Provider).InCatalog++
	}
	bs, err := st.Batches(ctx, "")
	if err != nil {
		return nil, err
	}
	newest := map[string]time.Time{}
	for _, b := range bs {
		l := get(b.Provider)
		l.Batches++
		l.Rows += b.Rows
		l.Bytes += b.Size
		if !b.Receipted.IsZero() {
			l.Applied++
		}
		if b.Stored.After(newest[b.Resource]) {
			newest[b.Resource] = b.Stored
		}
	}
	for _, r := range rs {
		l := get(r.Provider)
		l.Resources++
		if limit, ok := staleAfter[freq[r.ID]]; ok && now.Sub(newest[r.ID]) > limit {
			l.Stale = append(l.Stale, r.ID)
		}
	}
	gs, err := st.Grants(ctx)
	if err != nil {
		return nil, err
	}
	consumers := map[string]map[string]bool{}
	for _, g := range gs {
		if !g.Active(now) {
			continue
		}
		get(g.Consumer).GrantsNow++
		if consumers[g.Provider] == nil {
			consumers[g.Provider] = map[string]bool{}
		}
		consumers[g.Provider][g.Consumer] = true
	}
	for p, cs := range consumers {
		get(p).Consumers = len(cs)
	}
	as, err := st.Applications(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, a := range as {
		get(a.Consumer).Applications++
		if a.State == api.AppProviderReview && now.After(a.Deadline) {
			get(a.Provider).DecisionsOverdue++
		}
		full, err := st.Application(ctx, a.ID)
		if err != nil {
			return nil, err
		}
		for _, s := range full.Steps {
			if s.Actor == a.Provider {
				get(a.Provider).Decided++
				if s.Late > 0 {
					get(a.Provider).DecidedLate++
				}
			}
		}
	}
	fs, err := st.Feedback(ctx, "", false)
	if err != nil {
		return nil, err
	}
	for _, f := range fs {
		l := get(f.Provider)
		switch {
		case !f.Answered.IsZero():
			l.Answered++
			if f.Late > 0 {
				l.AnsweredLate++
			}
		case now.After(f.Deadline):
			l.FeedbackOverdue++
		}
	}
	lines := make([]deptLine, len(out))
	for i, l := range out {
		lines[i] = *l
	}
	slices.SortFunc(lines, func(a, b deptLine) int { return strings.Compare(a.Node, b.Node) })
	return lines, nil
}

// reportDepartments prints the evaluation report as a table or CSV.
func reportDepartments(ctx context.Context, st store.Store, format string, w io.Writer) error {
	lines, err := departmentReport(ctx, st, time.Now())
	if err != nil {
		return err
	}
	head := []string{"NODE", "NAME", "RESOURCES", "IN CATALOG", "STALE", "BATCHES", "ROWS", "BYTES", "APPLIED", "CONSUMERS",
		"DECISIONS", "LATE", "OVERDUE", "FEEDBACK ANSWERED", "LATE", "OVERDUE", "APPLICATIONS MADE", "GRANTS HELD"}
	row := func(l deptLine) []string {
		return []string{l.Node, l.Name, strconv.Itoa(l.Resources), strconv.Itoa(l.InCatalog), strings.Join(l.Stale, " "),
			strconv.FormatInt(l.Batches, 10), strconv.FormatInt(l.Rows, 10), strconv.FormatInt(l.Bytes, 10), strconv.FormatInt(l.Applied, 10),
			strconv.Itoa(l.Consumers), strconv.Itoa(l.Decided), strconv.Itoa(l.DecidedLate), strconv.Itoa(l.DecisionsOverdue),
			strconv.Itoa(l.Answered), strconv.Itoa(l.AnsweredLate), strconv.Itoa(l.FeedbackOverdue), strconv.Itoa(l.Applications), strconv.Itoa(l.GrantsNow)}
	}
	switch format {
	case "csv":
		cw := csv.NewWriter(w)
		cw.Write(head)
		for _, l := range lines {
			cw.Write(row(l))
		}
		cw.Flush()
		return cw.Error()
	case "", "table":
	default:
		return cli.Usagef("--format %q: use table or csv", format)
	}
	fmt.Fprintf(w, "department report as of %s (China time)\n", time.Now().In(calendar.CST).Format(time.DateTime))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, l := range lines {
		r := row(l)
		if r[4] == "" {
			r[4] = "-"
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
