package central

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/metrics"
)

// HubStatus is what qz-central status reports.
type HubStatus struct {
	Listen    string         `json:"listen"`
	QUIC      bool           `json:"quic"`
	TCP       bool           `json:"tcp"`
	StateDir  string         `json:"state_dir"`
	Metrics   string         `json:"metrics,omitempty"` // the configured address, when on
	Health    string         `json:"health"`            // ok, failing, not answering, or unknown (metrics off or port 0)
	Nodes     []NodeStatus   `json:"nodes"`
	NodeCount map[string]int `json:"node_count"` // by status
	store.Summary
}

// NodeStatus is one node in qz-central status.
type NodeStatus struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Status     string    `json:"status"`
	LastSeen   time.Time `json:"last_seen,omitzero"`
	CertExpiry time.Time `json:"cert_expiry,omitzero"`
}

func readHubStatus(ctx context.Context, cfg Config, st store.Store) (*HubStatus, error) {
	s := &HubStatus{Listen: cfg.Listen, QUIC: cfg.QUIC, TCP: cfg.TCP, StateDir: cfg.StateDir, Health: "unknown",
		NodeCount: map[string]int{store.NodePending: 0, store.NodeActive: 0, store.NodeRevoked: 0}}
	ns, err := st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range ns {
		s.NodeCount[n.Status]++
		s.Nodes = append(s.Nodes, NodeStatus{ID: n.ID, Name: n.Name, Status: n.Status, LastSeen: n.LastSeen, CertExpiry: n.CertExpiry})
	}
	if s.Summary, err = st.Summary(ctx); err != nil {
		return nil, err
	}
	if !metrics.Off(cfg.MetricsListen) {
		s.Metrics = cfg.MetricsListen
		if host, port, _ := net.SplitHostPort(cfg.MetricsListen); port != "0" {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1" // listening everywhere: ask it here
			}
			s.Health = probeHealth(ctx, net.JoinHostPort(host, port))
		}
	}
	return s, nil
}

// probeHealth asks a running hub's /healthz.
func probeHealth(ctx context.Context, addr string) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "not answering (is qz-central running?)"
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "failing (" + resp.Status + "): see the hub log"
	}
	return "ok"
}

func printHubStatus(s *HubStatus, asJSON bool, w io.Writer) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	transports := map[[2]bool]string{{true, true}: "QUIC and TLS/TCP", {true, false}: "QUIC only", {false, true}: "TLS/TCP only"}[[2]bool{s.QUIC, s.TCP}]
	fmt.Fprintf(tw, "hub\t%s (%s)\nstate\t%s\n", s.Listen, transports, s.StateDir)
	if s.Metrics != "" {
		fmt.Fprintf(tw, "metrics\thttp://%s/metrics\nhealth\t%s\n", s.Metrics, s.Health)
	}
	fmt.Fprintf(tw, "nodes\t%d active, %d pending, %d revoked\ngrants\t%d active\n", s.NodeCount[store.NodeActive], s.NodeCount[store.NodePending], s.NodeCount[store.NodeRevoked], s.ActiveGrants)
	fmt.Fprintf(tw, "batches\t%d held (%d bytes), %d awaiting delivery, %d awaiting receipt\n", s.Batches, s.Bytes, s.AwaitingDelivery, s.AwaitingReceipt)
	if len(s.Nodes) > 0 {
		fmt.Fprintln(tw, "\nNODE\tNAME\tSTATUS\tLAST SEEN\tCERT EXPIRES")
		for _, n := range s.Nodes {
			seen := "never"
			if !n.LastSeen.IsZero() {
				seen = n.LastSeen.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.ID, n.Name, n.Status, seen, day(n.CertExpiry))
		}
	}
	return tw.Flush()
}
