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
	hub, _, err := hubClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	var vs []api.CatalogVersion
	err = call(ctx, hub, http.MethodGet, "/v1/catalog?"+url.Values{"q": {strings.Join(words, " ")}}.Encode(), nil, &vs)
	return vs, err
}

func printCatalog(w io.Writer, vs []api.CatalogVersion, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(vs)
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
