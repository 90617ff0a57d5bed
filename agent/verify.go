package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
)

// Verification (比对) proves that a consumer's copy equals what left: the
// provider seals a digest of its table (row count and hash sum per bucket
// of keys) into the grant's line, so the consumer compares it after every
// earlier batch is applied, and names the differing buckets in its signed
// receipt. Nothing is resent; qz-agent reconcile repairs.
const keyVerify = "qz.verify" // Verification JSON: the grant's current or last one

// Verification is one comparison of a resource with a consumer's copy.
type Verification struct {
	ID       string `json:"id"`
	Grant    string `json:"grant"`
	Resource string `json:"resource"`
	Consumer string `json:"consumer"`
	// State is requested, waiting (the digest is sealed; the consumer's
	// receipt is not in), identical or different.
	State   string `json:"state"`
	Seq     uint64 `json:"seq,omitempty"`
	Rows    int64  `json:"rows"`
	Files   int64  `json:"files,omitempty"`
	Buckets int    `json:"buckets,omitempty"`
	// Differ lists the differing buckets, with the provider's row count
	// of each in DifferRows.
	Differ     []int   `json:"differ,omitempty"`
	DifferRows []int64 `json:"differ_rows,omitempty"`
	// DifferFiles lists, for a folder, the files that differ, are missing
	// or are extra at the consumer.
	DifferFiles []string  `json:"differ_files,omitempty"`
	Requested   time.Time `json:"requested"`
	Compared    time.Time `json:"compared,omitzero"`
	// Counts holds the provider's row count of every bucket until the
	// verdict, which keeps those of the differing ones.
	Counts []int64 `json:"counts,omitempty"`
}

// Verification states.
const (
	verifyRequested = "requested"
	verifyWaiting   = "waiting"
	verifyIdentical = "identical"
	verifyDifferent = "different"
)

// verifySealed notes a sealed verify digest in its batch's commit, so its
// receipt is looked for.
func verifySealed(st connectors.State, seq uint64, out *connectors.Output) error {
	raw, ok, err := st.Get(keyVerify)
	if err != nil || !ok {
		return err
	}
	var v Verification
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	v.State, v.Seq = verifyWaiting, seq
	if out.Schema != nil {
		rc := out.Schema.Reconcile
		v.Buckets, v.Rows, v.Counts = rc.Buckets, 0, rc.Counts
		for _, n := range rc.Counts {
			v.Rows += n
		}
	} else {
		v.Files = out.Files[0].Size
	}
	raw, _ = json.Marshal(v)
	out.Changes.Put(keyVerify, raw)
	return nil
}

// verifyCheck reads the consumer's answer to a waiting verification.
func (a *Agent) verifyCheck(ctx context.Context, scope string, raw []byte) error {
	var v Verification
	if err := json.Unmarshal(raw, &v); err != nil || v.State != verifyWaiting {
		return err
	}
	g, active := a.grantActive(v.Grant)
	if !active {
		return nil
	}
	rc, err := a.receiptFor(ctx, g, v.Seq)
	if err != nil || rc == nil {
		return err
	}
	v.Differ, v.DifferFiles, v.Compared = rc.Mismatch, rc.MismatchFiles, time.Now().UTC()
	v.State = verifyIdentical
	if len(v.Differ) > 0 || len(v.DifferFiles) > 0 {
		v.State = verifyDifferent
	}
	v.DifferRows = make([]int64, len(v.Differ))
	for i, b := range v.Differ {
		if b >= 0 && b < len(v.Counts) {
			v.DifferRows[i] = v.Counts[b]
		}
	}
	v.Counts = nil
	out, _ := json.Marshal(v)
	var ch connectors.Changes
	ch.Put(keyVerify, out)
	a.log.Info("verify: the consumer compared its copy", "grant", v.Grant, "consumer", v.Consumer, "verdict", v.State, "rows", v.Rows, "differing_buckets", len(v.Differ))
	return a.state.commitChanges(ctx, scope, &ch)
}

// StartVerify asks the agent to compare a table resource with a consumer's
// copy, through the hub, and returns the request.
func StartVerify(ctx context.Context, cfg Config, resource, node string) (*Verification, error) {
	g, st, err := providedTo(ctx, cfg, resource, node, "a verification")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	v := &Verification{ID: newVerifyID(), Grant: g.ID, Resource: resource, Consumer: node, State: verifyRequested, Requested: time.Now().UTC()}
	raw, _ := json.Marshal(v)
	var ch connectors.Changes
	ch.Put(keyVerify, raw)
	ch.Put(connectors.KeyVerifyRequest, []byte(v.ID))
	return v, st.commitChanges(ctx, "src/"+g.ID, &ch)
}

func newVerifyID() string { return "verify" + strings.TrimPrefix(newCopyID(), "copy") }

// waitVerify waits for a verification's verdict and prints it; a
// difference is an error (non-zero exit).
func waitVerify(ctx context.Context, cfg Config, req *Verification, timeout time.Duration, w io.Writer) error {
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return err
	}
	defer st.Close()
	view := st.view("src/" + req.Grant)
	deadline := time.Now().Add(timeout)
	told := false
	for {
		raw, _, err := view.Get(keyVerify)
		if err != nil {
			return err
		}
		var v Verification
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		if v.ID != req.ID {
			return fmt.Errorf("verification %s was replaced by %s", req.ID, v.ID)
		}
		switch v.State {
		case verifyIdentical:
			if v.Buckets == 0 {
				fmt.Fprintf(w, "identical: %s holds the same %d files of %s as this node sent (each compared by SHA-256, signed receipt for batch %d)\n", v.Consumer, v.Files, v.Resource, v.Seq)
				return nil
			}
			fmt.Fprintf(w, "identical: %s holds the same %d rows of %s as this node (%d key buckets compared, signed receipt for batch %d)\n", v.Consumer, v.Rows, v.Resource, v.Buckets, v.Seq)
			return nil
		case verifyDifferent:
			if v.Buckets == 0 {
				fmt.Fprintf(w, "DIFFERENT: %s's copy of %s differs from the %d files this node sent:\n", v.Consumer, v.Resource, v.Files)
				for _, f := range v.DifferFiles {
					fmt.Fprintf(w, "  %s\n", f)
				}
				return fmt.Errorf("%s differs at %s: 'qz-agent copy %s --to %s' sends every file again", v.Resource, v.Consumer, v.Resource, v.Consumer)
			}
			fmt.Fprintf(w, "DIFFERENT: %d of %d key buckets of %s differ at %s (this node has %d rows):\n", len(v.Differ), v.Buckets, v.Resource, v.Consumer, v.Rows)
			for i, b := range v.Differ[:min(len(v.Differ), 20)] {
				if i < len(v.DifferRows) {
					fmt.Fprintf(w, "  bucket %d: %d rows here\n", b, v.DifferRows[i])
				} else {
					fmt.Fprintf(w, "  bucket %d\n", b)
				}
			}
			if len(v.Differ) > 20 {
				fmt.Fprintf(w, "  … and %d more\n", len(v.Differ)-20)
			}
			return fmt.Errorf("%s differs at %s: run 'qz-agent reconcile %s' to resend the differing buckets", v.Resource, v.Consumer, v.Resource)
		case verifyWaiting:
			if !told && v.Buckets == 0 {
				fmt.Fprintf(w, "manifest of %d files sealed as batch %d; waiting for %s to compare its folder after the batches before it\n", v.Files, v.Seq, v.Consumer)
				told = true
			}
			if !told {
				fmt.Fprintf(w, "digest of %d rows sealed as batch %d; waiting for %s to compare it after the batches before it\n", v.Rows, v.Seq, v.Consumer)
				told = true
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no verdict after %s (state %s): the agent goes on; run qz-agent verify again later, or check qz-agent status", timeout, v.State)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}
