package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/transport"
)

// hubClient connects to the hub with this node's identity, for the
// one-off commands.
func hubClient(cfg Config) (*transport.Client, *Identity, error) {
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return nil, nil, err
	}
	return &transport.Client{Hub: cfg.Hub, TLS: id.ClientTLS(cfg.Hub), Mode: cfg.Transport}, id, nil
}

// SearchCatalog asks the hub for the approved catalog entries in which
// every word occurs.
func SearchCatalog(ctx context.Context, cfg Config, words []string) ([]api.CatalogVersion, error) {
	var vs []api.CatalogVersion
	_, err := hubCall(ctx, cfg, http.MethodGet, "/v1/catalog?"+url.Values{"q": {strings.Join(words, " ")}}.Encode(), nil, &vs)
	return vs, err
}

func printCatalog(w io.Writer, vs []api.CatalogVersion, asJSON bool) error {
	if asJSON {
		return printJSON(w, vs)
	}
	if len(vs) == 0 {
		fmt.Fprintln(w, "no approved catalog entry matches")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tCATEGORY\tMODES\tFREQUENCY\tDEPARTMENT\tNAME\tFIELDS")
	for _, v := range vs {
		e := v.Entry
		var fields []string
		for _, f := range e.Fields {
			fields = append(fields, f.Name)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Resource, e.Category, strings.Join(e.Modes, ","), e.Frequency, e.Department, e.Name, strings.Join(fields, ","))
	}
	return tw.Flush()
}

// Apply sends an application for a resource to the hub.
func Apply(ctx context.Context, cfg Config, req api.ApplicationRequest) (api.Application, error) {
	var a api.Application
	_, err := hubCall(ctx, cfg, http.MethodPost, "/v1/applications", req, &a)
	return a, err
}

// Applications lists the applications this node made or must decide.
func Applications(ctx context.Context, cfg Config) ([]api.Application, string, error) {
	var as []api.Application
	me, err := hubCall(ctx, cfg, http.MethodGet, "/v1/applications", nil, &as)
	return as, me, err
}

// Decide is the provider's decision on an application for its resource.
func Decide(ctx context.Context, cfg Config, id string, d api.Decision) (api.Application, error) {
	var a api.Application
	_, err := hubCall(ctx, cfg, http.MethodPost, "/v1/applications/"+url.PathEscape(id)+"/decision", d, &a)
	return a, err
}

func printApplications(w io.Writer, as []api.Application, me string, asJSON bool) error {
	if asJSON {
		return printJSON(w, as)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tSTATE\tDUE\tRESOURCE\tCONSUMER\tMODE\tFIELDS\tPURPOSE\tGRANT")
	for _, a := range as {
		role := "consumer"
		if a.Provider == me {
			role = "provider"
			if a.State == api.AppProviderReview {
				role = "provider: decide"
			}
		}
		due := "-"
		if !a.Deadline.IsZero() {
			due = a.Deadline.In(calendar.CST).Format("2006-01-02 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, role, a.State, due, a.Resource, a.Consumer, a.Mode, strings.Join(a.Fields, ","), a.Purpose, a.Grant)
	}
	return tw.Flush()
}

// hubCall runs one request against the hub with this node's identity.
func hubCall(ctx context.Context, cfg Config, method, path string, in, out any) (string, error) {
	hub, id, err := hubClient(cfg)
	if err != nil {
		return "", err
	}
	defer hub.Close()
	return id.NodeID, call(ctx, hub, method, path, in, out)
}

func printFeedback(w io.Writer, fs []api.Feedback, me string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tRESOURCE\tRECORD\tFIELD\tPROBLEM\tDUE\tANSWER")
	for _, f := range fs {
		role := "reported"
		if f.Provider == me {
			role = "to answer"
			if !f.Answered.IsZero() {
				role = "answered"
			}
		}
		ans := f.Answer
		if f.Answered.IsZero() {
			ans = "-"
		} else if f.Late > 0 {
			ans += fmt.Sprintf(" (%d working days late)", f.Late)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.ID, role, f.Resource, f.Record, f.Field, f.Problem, f.Deadline.In(calendar.CST).Format("2006-01-02 15:04"), ans)
	}
	return tw.Flush()
}

// printJSON writes v as indented JSON, for --json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
