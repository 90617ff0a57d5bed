package central

// Anchoring the audit chain. The hash chain alone shows a record changed,
// removed or reordered in the middle of the log, but not records cut from
// its end (nothing follows them to break), nor a log rewritten and
// re-hashed from some record on. So the hub signs, with its CA key, a
// checkpoint of the log's head at least every AuditCheckpointInterval that
// records were added; every agent fetches and keeps them (agent/checkpoints.go),
// and 'qz-central audit verify --against DIR' holds the log to the
// checkpoints gathered from agents.

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/anchor"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
)

// ErrAuditCut means the audit log no longer holds what the hub signed in a
// checkpoint: records were cut from its end, or rewritten.
var ErrAuditCut = errors.New("the audit log does not hold what the hub signed")

// startAnchor refuses a log that lost what the hub's own newest checkpoint
// signed, so the hub never chains new records onto a cut in silence; then
// it signs a checkpoint of what was added since (records made by the CLI
// while the hub was stopped) and goes on signing in the background.
func (h *Hub) startAnchor(ctx context.Context) error {
	if err := h.checkAnchor(ctx); err != nil {
		return err
	}
	if err := h.signCheckpoint(ctx); err != nil {
		return err
	}
	go h.anchorLoop(ctx)
	return nil
}

// anchorLoop signs a checkpoint every interval in which records were added.
func (h *Hub) anchorLoop(ctx context.Context) {
	t := time.NewTicker(h.checkpointInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := h.checkAnchor(ctx); err != nil {
			// Records were cut while the hub runs. Signing now would
			// put the hub's name under the cut; the error repeats until
			// an operator looks (the agents' copies still hold the truth).
			h.log.Error("audit log cut while the hub runs; no checkpoint signed", "err", err)
			continue
		}
		if err := h.signCheckpoint(ctx); err != nil && ctx.Err() == nil {
			h.log.Error("audit checkpoint not signed", "err", err)
		}
	}
}

// checkpointInterval is the configured interval, or the default for a
// Config not made by DefaultConfig.
func (h *Hub) checkpointInterval() time.Duration {
	if d := h.cfg.AuditCheckpointInterval; d > 0 {
		return d
	}
	return time.Minute
}

// checkAnchor compares the log with the hub's own newest checkpoint.
func (h *Hub) checkAnchor(ctx context.Context) error {
	cps, err := h.store.Checkpoints(ctx, 0, 1)
	if err != nil || len(cps) == 0 {
		return err
	}
	cp := cps[0]
	if err := cp.Verify(h.ca.Cert); err != nil {
		return fmt.Errorf("%w: the newest checkpoint in the hub's database does not verify (%v): the database was altered; restore the hub's state from a backup ('qz-central restore DIR')%s", ErrAuditCut, err, orAcceptCut)
	}
	head, _, err := h.store.AuditHead(ctx)
	if err != nil {
		return err
	}
	if head < cp.Seq {
		return fmt.Errorf("%w: the log ends at record %d, but the hub signed record %d at %s: %s were removed; restore the hub's state from a backup taken after that time ('qz-central restore DIR') and check it with 'qz-central audit verify --against DIR' and the agents' checkpoints%s",
			ErrAuditCut, head, cp.Seq, cst(cp.At), recordRange(head+1, cp.Seq), orAcceptCut)
	}
	hash, err := h.store.AuditRecordHash(ctx, cp.Seq)
	if err != nil {
		return err
	}
	if hash != cp.Head {
		return fmt.Errorf("%w: record %d is not the one the hub signed at %s: the log up to it was rewritten; restore the hub's state from a backup ('qz-central restore DIR')%s", ErrAuditCut, cp.Seq, cst(cp.At), orAcceptCut)
	}
	return nil
}

// orAcceptCut ends the start refusals: the way on when no backup helps.
const orAcceptCut = "; if no backup holds them, 'qz-central audit accept-cut --reason TEXT' records the loss in the audit log and lets the hub start"

// staleCheckpoints are the hub's own checkpoints the log no longer holds:
// past its end, of a record with another hash, or not verifying.
func staleCheckpoints(recs []store.AuditRecord, cps []anchor.Checkpoint, ca *x509.Certificate) []anchor.Checkpoint {
	hashes := make(map[int64]string, len(recs))
	for _, r := range recs {
		hashes[r.Seq] = r.Hash
	}
	var out []anchor.Checkpoint
	for _, c := range cps {
		if c.Verify(ca) != nil || hashes[c.Seq] != c.Head {
			out = append(out, c)
		}
	}
	return out
}

// signCheckpoint signs and keeps a checkpoint of the log's head, if records
// were added since the newest one.
func (h *Hub) signCheckpoint(ctx context.Context) error {
	head, hash, err := h.store.AuditHead(ctx)
	if err != nil || head == 0 {
		return err
	}
	if cps, err := h.store.Checkpoints(ctx, head-1, 1); err != nil || len(cps) > 0 {
		return err // the head is signed already
	}
	cp, err := anchor.Sign(h.ca, head, hash, h.now())
	if err != nil {
		return err
	}
	return h.store.PutCheckpoint(ctx, cp)
}

// auditCheckpoints serves GET /v1/audit/checkpoints?after=N to agents.
func (h *Hub) auditCheckpoints(w http.ResponseWriter, r *http.Request) {
	after, err := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	if err != nil || after < 0 {
		httpError(w, http.StatusBadRequest, "after: want the number of the newest audit record the agent holds a checkpoint of, e.g. ?after=0")
		return
	}
	cps, err := h.store.Checkpoints(r.Context(), after, api.MaxCheckpoints)
	if err != nil {
		h.internal(w, "audit checkpoints", err)
		return
	}
	if len(cps) == 0 && after > 0 {
		// An agent holding a checkpoint past the log's end is the cut
		// showing from outside (or a restore from a backup): say so here,
		// not only at verify time. The agent gets the newest checkpoints
		// anyway, or it would wait for the log to pass its own.
		if head, _, err := h.store.AuditHead(r.Context()); err == nil && head < after {
			h.log.Error("an agent holds a signed checkpoint past the end of the audit log: records were cut, or the hub was restored from a backup; run 'qz-central audit verify --against DIR' with the agents' checkpoints",
				"node", nodeID(r), "held", after, "log_ends", head)
			if cps, err = h.store.Checkpoints(r.Context(), 0, api.MaxCheckpoints); err != nil {
				h.internal(w, "audit checkpoints", err)
				return
			}
		}
	}
	writeJSON(w, api.AuditCheckpoints{IntervalMS: h.checkpointInterval().Milliseconds(), Checkpoints: cps})
}

// anchorReport is what verifyAgainst found.
type anchorReport struct {
	Checked  int             // checkpoints whose signature verified
	Holders  []string        // who held them
	Newest   *heldCheckpoint // the believed checkpoint of the highest record
	Problems []error         // forged checkpoints, cut or rewritten records
}

// heldCheckpoint is a checkpoint and who held it.
type heldCheckpoint struct {
	anchor.Checkpoint
	holder string
}

func (c heldCheckpoint) String() string {
	who := "agent " + c.holder
	if c.holder == "hub" {
		who = "the hub's own copy" // its database, or an export of it
	}
	return fmt.Sprintf("checkpoint %s from %s signed head %d", cst(c.At), who, c.Seq)
}

// verifyAgainst holds the audit log to signed checkpoints. Each
// checkpoint's signature is checked first: one that does not verify under
// the hub's CA is reported and not believed. A believed checkpoint past the
// log's end names the records cut; one whose head differs from the record
// it names shows the log rewritten up to there.
func verifyAgainst(recs []store.AuditRecord, files []anchor.File, ca *x509.Certificate) anchorReport {
	var rep anchorReport
	hashes := make(map[int64]string, len(recs))
	var last int64
	for _, r := range recs {
		hashes[r.Seq] = r.Hash
		last = max(last, r.Seq)
	}
	var held []heldCheckpoint
	for _, f := range files {
		if !slices.Contains(rep.Holders, f.Holder) {
			rep.Holders = append(rep.Holders, f.Holder)
		}
		for _, c := range f.Checkpoints {
			hc := heldCheckpoint{c, f.Holder}
			if err := c.Verify(ca); err != nil {
				rep.Problems = append(rep.Problems, fmt.Errorf("%s is not believed: %w", hc, err))
				continue
			}
			rep.Checked++
			held = append(held, hc)
		}
	}
	slices.SortFunc(held, func(a, b heldCheckpoint) int { return cmp.Compare(a.Seq, b.Seq) })
	if len(held) > 0 {
		rep.Newest = &held[len(held)-1]
	}
	// The cut: the highest checkpoint past the log's end names it all.
	if n := rep.Newest; n != nil && n.Seq > last {
		verb := "are"
		if last+1 == n.Seq {
			verb = "is"
		}
		rep.Problems = append(rep.Problems, fmt.Errorf("%s %s missing: %s", recordRange(last+1, n.Seq), verb, n))
	}
	// A rewrite: the lowest checkpoint within the log that no longer
	// matches, and the highest matching one below it, bound it.
	for i := range held {
		c := held[i]
		if c.Seq > last || hashes[c.Seq] == c.Head {
			continue
		}
		from := int64(1)
		for j := i - 1; j >= 0; j-- {
			if held[j].Seq < c.Seq && hashes[held[j].Seq] == held[j].Head {
				from = held[j].Seq + 1
				break
			}
		}
		what := fmt.Sprintf("one of records %d–%d was", from, c.Seq)
		if from == c.Seq {
			what = fmt.Sprintf("record %d was", from)
		}
		rep.Problems = append(rep.Problems, fmt.Errorf("record %d is not the one the hub signed (%s): %s changed and the log re-hashed after it", c.Seq, c, what))
		break
	}
	return rep
}

// recordRange names records from..to for a message.
func recordRange(from, to int64) string {
	if from == to {
		return fmt.Sprintf("record %d", from)
	}
	return fmt.Sprintf("records %d–%d", from, to)
}

// cst formats a time for people: China time, to the minute.
func cst(t time.Time) string { return t.In(calendar.CST).Format("2006-01-02 15:04") + " CST" }

// joinProblems puts an anchorReport's problems in one error, one a line.
func joinProblems(ps []error) error {
	if len(ps) == 0 {
		return nil
	}
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(p.Error())
	}
	return errors.New(b.String())
}
