package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// ReceiptLine is one batch this node provided and what became of it.
type ReceiptLine struct {
	Grant    string    `json:"grant"`
	Resource string    `json:"resource"`
	Consumer string    `json:"consumer"`
	Seq      uint64    `json:"seq"`
	Size     int64     `json:"size"`
	Stored   time.Time `json:"stored"`
	Applied  time.Time `json:"applied,omitzero"`
	// Verified is true when the consumer's receipt checks out against the
	// consumer's seal key and names this batch's digest.
	Verified bool   `json:"verified"`
	Problem  string `json:"problem,omitempty"`
}

// ListReceipts asks the hub for the receipts of the grants this node
// provides (or only grant, if not empty) and checks each signature here:
// the provider need not trust the hub's word that a batch was applied.
func ListReceipts(ctx context.Context, cfg Config, grant string) ([]ReceiptLine, error) {
	hub, id, err := hubClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	var gs []api.GrantInfo
	if err := call(ctx, hub, http.MethodGet, "/v1/grants", nil, &gs); err != nil {
		return nil, err
	}
	pinned, done, err := pinnedKeys(cfg, hub)
	if err != nil {
		return nil, err
	}
	defer done()
	keys := map[string]seal.PublicKey{}
	var out []ReceiptLine
	for _, g := range gs {
		if g.Provider != id.NodeID || (grant != "" && g.ID != grant) {
			continue
		}
		var recs []api.ReceiptRecord
		if err := call(ctx, hub, http.MethodGet, "/v1/receipts?"+url.Values{"grant": {g.ID}}.Encode(), nil, &recs); err != nil {
			return nil, err
		}
		for _, r := range recs {
			l := ReceiptLine{Grant: g.ID, Resource: g.Resource, Consumer: g.Consumer, Seq: r.Sequence, Size: r.Size, Stored: r.Stored}
			if len(r.Receipt) == 0 {
				l.Problem = problemPending
				out = append(out, l)
				continue
			}
			rc, err := checkReceipt(r, g, id.NodeID, func(keyID string) (seal.PublicKey, error) {
				k, ok := keys[keyID]
				if !ok {
					var err error
					if k, err = pinned(ctx, g.Consumer, keyID); err != nil {
						return k, err
					}
					keys[keyID] = k
				}
				return k, nil
			})
			if rc != nil {
				l.Applied = rc.Applied
			}
			if err != nil {
				l.Problem = err.Error()
			} else {
				l.Verified = true
			}
			out = append(out, l)
		}
	}
	return out, nil
}

// checkReceipt verifies a consumer's receipt for one of this provider's
// batches: signed by the consumer's key, naming the batch the hub stored.
func checkReceipt(r api.ReceiptRecord, g api.GrantInfo, me string, key func(keyID string) (seal.PublicKey, error)) (*receipt.Receipt, error) {
	rc, err := receipt.Unmarshal(r.Receipt)
	if err != nil {
		return nil, err
	}
	k, err := key(rc.SealKeyID)
	if err != nil {
		return &rc, err
	}
	if err := rc.Verify(k); err != nil {
		return &rc, err
	}
	if rc.BatchDigest != r.Digest || rc.Sequence != r.Sequence || rc.Grant != g.ID || rc.Provider != me || rc.Consumer != g.Consumer {
		return &rc, fmt.Errorf("receipt names another batch")
	}
	return &rc, nil
}

// fetchSealKey asks the hub for a node's seal key by key ID, and checks
// the answer is that key.
func fetchSealKey(ctx context.Context, hub *transport.Client, node, keyID string) (seal.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hub.URL("/v1/nodes/"+node+"/seal?"+url.Values{"key": {keyID}}.Encode()), nil)
	if err != nil {
		return seal.PublicKey{}, err
	}
	resp, err := hub.Do(req)
	if err != nil {
		return seal.PublicKey{}, fmt.Errorf("%w: %w", errTransient, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return seal.PublicKey{}, fmt.Errorf("%w: %s is not a seal key of node %s", batch.ErrUnknownKey, keyID, node)
	}
	if resp.StatusCode != http.StatusOK {
		return seal.PublicKey{}, fmt.Errorf("seal key of %s: %s", node, apiError(resp))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return seal.PublicKey{}, err
	}
	pub, err := seal.ParsePublic(string(b))
	if err != nil {
		return pub, err
	}
	if pub.KeyID() != keyID {
		return seal.PublicKey{}, fmt.Errorf("hub sent seal key %s for %s", pub.KeyID(), keyID)
	}
	return pub, nil
}

// failedReceipts is the error of a listing in which some receipt failed
// its check (a batch not applied yet is no failure), or nil.
func failedReceipts(ls []ReceiptLine) error {
	bad := 0
	for _, l := range ls {
		if !l.Verified && l.Problem != problemPending {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d receipts failed their check (see RECEIPT above); the consumer's statement cannot be relied on: ask the hub operator and the consumer", bad, len(ls))
	}
	return nil
}

// problemPending is the problem of a batch that has no receipt yet.
const problemPending = "not applied yet"

// DestructionLine is one ended grant this node provided under which the
// consumer was to destroy what it received, and its destruction receipt.
type DestructionLine struct {
	Grant     string    `json:"grant"`
	Resource  string    `json:"resource"`
	Consumer  string    `json:"consumer"`
	Status    string    `json:"status"`
	Destroyed time.Time `json:"destroyed,omitzero"`
	What      string    `json:"what,omitempty"`
	// Verified is true when the receipt checks out against the consumer's
	// seal key and names this grant, resource, provider and consumer.
	Verified bool   `json:"verified"`
	Problem  string `json:"problem,omitempty"`
}

// ListDestructions asks the hub for the destruction receipts of the ended
// grants this node provides (or only grant, if not empty) and checks each
// one's seal here.
func ListDestructions(ctx context.Context, cfg Config, grant string) ([]DestructionLine, error) {
	hub, id, err := hubClient(cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	var recs []api.DestructionRecord
	if err := call(ctx, hub, http.MethodGet, "/v1/destructions?"+url.Values{"grant": {grant}}.Encode(), nil, &recs); err != nil {
		return nil, err
	}
	out := []DestructionLine{}
	for _, r := range recs {
		if r.Provider != id.NodeID {
			continue // consumed here, not provided
		}
		l := DestructionLine{Grant: r.Grant, Resource: r.Resource, Consumer: r.Consumer, Status: r.Status}
		if len(r.Receipt) == 0 {
			l.Problem = problemPending
			out = append(out, l)
			continue
		}
		d, err := checkDestruction(r, id.NodeID, func(keyID string) (seal.PublicKey, error) {
			return fetchSealKey(ctx, hub, r.Consumer, keyID)
		})
		if d != nil {
			l.Destroyed, l.What = d.Destroyed, d.What
		}
		if err != nil {
			l.Problem = err.Error()
		} else {
			l.Verified = true
		}
		out = append(out, l)
	}
	return out, nil
}

// checkDestruction verifies a consumer's destruction receipt for one of
// this provider's grants: signed by the consumer's key, naming the grant.
func checkDestruction(r api.DestructionRecord, me string, key func(keyID string) (seal.PublicKey, error)) (*receipt.Destruction, error) {
	var d receipt.Destruction
	if err := json.Unmarshal(r.Receipt, &d); err != nil {
		return nil, fmt.Errorf("unreadable destruction receipt: %w", err)
	}
	k, err := key(d.SealKeyID)
	if err != nil {
		return &d, err
	}
	if err := d.Verify(k); err != nil {
		return &d, err
	}
	if d.Grant != r.Grant || d.Resource != r.Resource || d.Provider != me || d.Consumer != r.Consumer {
		return &d, fmt.Errorf("receipt names another grant")
	}
	return &d, nil
}

// failedDestructions is the error of a listing in which some destruction
// receipt failed its check, or nil.
func failedDestructions(ls []DestructionLine) error {
	bad := 0
	for _, l := range ls {
		if !l.Verified && l.Problem != problemPending {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d destruction receipts failed their check (see RECEIPT above); ask the hub operator and the consumer", bad, len(ls))
	}
	return nil
}

func printDestructions(w io.Writer, ls []DestructionLine, asJSON bool) error {
	if asJSON {
		return printJSON(w, ls)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GRANT\tRESOURCE\tCONSUMER\tENDED\tDESTROYED (China time)\tWHAT\tRECEIPT")
	for _, l := range ls {
		at, verdict := "-", "verified"
		if !l.Destroyed.IsZero() {
			at = l.Destroyed.In(calendar.CST).Format(time.DateTime)
		}
		if !l.Verified {
			verdict = l.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Grant, l.Resource, l.Consumer, l.Status, at, l.What, verdict)
	}
	return tw.Flush()
}

func printReceipts(w io.Writer, ls []ReceiptLine, asJSON bool) error {
	if asJSON {
		return printJSON(w, ls)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GRANT\tRESOURCE\tCONSUMER\tBATCH\tBYTES\tAPPLIED\tRECEIPT")
	for _, l := range ls {
		applied, verdict := "-", "verified"
		if !l.Applied.IsZero() {
			applied = l.Applied.Local().Format(time.DateTime)
		}
		if !l.Verified {
			verdict = l.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", l.Grant, l.Resource, l.Consumer, l.Seq, l.Size, applied, verdict)
	}
	return tw.Flush()
}
