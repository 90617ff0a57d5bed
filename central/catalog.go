package central

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/cli"
)

// catalogCommand runs the hub operator's catalog review commands.
func catalogCommand(ctx context.Context, st store.Store, cmd string, pos []string, version int, reason string, w io.Writer) error {
	if cmd == "catalog list" {
		vs, err := st.CatalogLatest(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RESOURCE\tVERSION\tSTATUS\tDEADLINE\tCATEGORY\tPROVIDER\tNAME")
		now := time.Now()
		for _, v := range vs {
			dl := "-"
			if v.Status == store.CatalogPending {
				dl = v.Deadline.In(calendar.CST).Format(time.DateTime)
				if now.After(v.Deadline) {
					dl += " OVERDUE"
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", v.Entry.Resource, v.Version, v.Status, dl, v.Entry.Category, v.Provider, v.Entry.Name)
		}
		return tw.Flush()
	}
	if err := cli.Want(pos, 1, "qz-central "+cmd+" RESOURCE"); err != nil {
		return err
	}
	switch cmd {
	case "catalog show":
		vs, err := st.CatalogVersions(ctx, pos[0])
		if err != nil {
			return err
		}
		if len(vs) == 0 {
			return fmt.Errorf("resource %s has no catalog entry (its provider declares one with the resource, under catalog:)", pos[0])
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(vs)
	case "catalog reject":
		if strings.TrimSpace(reason) == "" {
			st.Audit(ctx, store.Actor(ctx), "catalog.refuse", pos[0], "rejection without a reason")
			return cli.Usagef("a rejection needs --reason: the provider must know what to change")
		}
	}
	if version < 1 {
		return cli.Usagef("name the version you reviewed: qz-central %s %s --version N (see qz-central catalog list)", cmd, pos[0])
	}
	v, err := st.ReviewCatalog(ctx, pos[0], version, cmd == "catalog approve", reason, store.Actor(ctx))
	if err != nil {
		st.Audit(ctx, store.Actor(ctx), "catalog.refuse", pos[0], err.Error())
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s version %d: %s\n", pos[0], v.Version, v.Status)
	return nil
}
