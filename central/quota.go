package central

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/config"
)

// What one provider may hold at the hub. The receiver bounds the sender:
// a provider's uploads go only a window of sequence numbers ahead of what
// its grant's line has stored, and what it holds here (batches its
// consumers have not yet confirmed with a receipt, and unfinished uploads)
// stays under its
// quota. A provider past either is refused until its consumers catch up;
// nothing of it is dropped, its agent keeps the batches in its spool.

// partialBytes counts the bytes of unfinished uploads by provider. An
// upload in progress counts with the total it declared from its start, so
// that many uploads started at once cannot each pass the quota check
// with what little they hold yet.
type partialBytes struct {
	mu    sync.Mutex
	files map[string]partialFile // partial file name → what it counts
}

type partialFile struct {
	provider string
	bytes    int64
}

// sum is what a provider's unfinished uploads count, the file skip aside.
// Callers hold p.mu.
func (p *partialBytes) sumLocked(provider, skip string) int64 {
	var n int64
	for name, f := range p.files {
		if f.provider == provider && name != skip {
			n += f.bytes
		}
	}
	return n
}

// byProvider is every provider's count, for the metrics.
func (p *partialBytes) byProvider() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int64{}
	for _, f := range p.files {
		out[f.provider] += f.bytes
	}
	return out
}

// set records what a partial file counts now: its size on disk, or
// nothing once it is gone.
func (p *partialBytes) set(name, provider string) {
	fi, err := os.Stat(name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		delete(p.files, filepath.Base(name))
		return
	}
	p.files[filepath.Base(name)] = partialFile{provider: provider, bytes: fi.Size()}
}

// forget drops a partial file deleted by the janitor.
func (p *partialBytes) forget(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.files, name)
}

// loadPartials counts the unfinished uploads found at start. A file whose
// grant is unknown counts for nobody; it expires like any other.
func (h *Hub) loadPartials(ctx context.Context) {
	ents, _ := os.ReadDir(h.cfg.partialDir())
	providers := map[string]string{}
	for _, e := range ents {
		grant, ok := partialGrant(e.Name())
		if !ok {
			continue
		}
		p, seen := providers[grant]
		if !seen {
			if g, err := h.store.Grant(ctx, grant); err == nil {
				p = g.Provider
			}
			providers[grant] = p
		}
		if p != "" {
			h.partials.set(filepath.Join(h.cfg.partialDir(), e.Name()), p)
		}
	}
}

// partialGrant is the grant a partial file's name (GRANT-SEQ.part) names.
func partialGrant(name string) (string, bool) {
	base, ok := strings.CutSuffix(name, ".part")
	i := strings.LastIndexByte(base, '-')
	if !ok || i <= 0 {
		return "", false
	}
	if _, err := strconv.ParseUint(base[i+1:], 10, 64); err != nil || api.ValidID("grant", base[:i]) != nil {
		return "", false
	}
	return base[:i], true
}

// quotaError is an upload refused for its provider's quota.
type quotaError struct {
	provider     string
	held, upload int64
	quota        config.Size
}

func (e *quotaError) Error() string {
	return fmt.Sprintf("provider %s holds %d bytes at the hub (batches its consumers have not applied yet, and unfinished uploads); this batch of %d bytes would pass its quota of %s (provider_quota): uploads resume by themselves as consumers apply and send receipts, so bring offline or stopped consumers back, or raise provider_quota in the hub's config",
		e.provider, e.held, e.upload, e.quota)
}

// reserve counts an upload of total bytes to the partial file part
// against its provider's quota, or says why it cannot. done records what
// the file holds once the upload request ends.
func (h *Hub) reserve(ctx context.Context, g store.Grant, part string, total int64) (done func(), err error) {
	held, err := h.store.HeldBytes(ctx, g.Provider)
	if err != nil {
		return nil, fmt.Errorf("count held bytes: %w", err)
	}
	name := filepath.Base(part)
	p := &h.partials
	p.mu.Lock()
	used := held[g.Provider] + p.sumLocked(g.Provider, name)
	if used+total > int64(h.cfg.ProviderQuota) {
		p.mu.Unlock()
		return nil, &quotaError{provider: g.Provider, held: used, upload: total, quota: h.cfg.ProviderQuota}
	}
	p.files[name] = partialFile{provider: g.Provider, bytes: total}
	p.mu.Unlock()
	return func() { p.set(part, g.Provider) }, nil
}

// heldBytes is what each provider holds at the hub, as its quota counts it.
func (h *Hub) heldBytes(ctx context.Context) (map[string]int64, error) {
	held, err := h.store.HeldBytes(ctx, "")
	if err != nil {
		return nil, err
	}
	for p, n := range h.partials.byProvider() {
		held[p] += n
	}
	return held, nil
}

// windowError is an upload refused for its sequence number.
type windowError struct {
	grant            string
	seq, highest, to uint64
	window           uint64
}

func (e *windowError) Error() string {
	return fmt.Sprintf("sequence %d is beyond grant %s's upload window: the hub has stored up to %d and takes up to %d (upload_window %d); upload the batches before it first",
		e.seq, e.grant, e.highest, e.to, e.window)
}

// inWindow checks a batch's sequence number against its grant's window:
// at most upload_window past the highest stored.
func (h *Hub) inWindow(ctx context.Context, g store.Grant, seq uint64) error {
	highest, err := h.store.HighestSequence(ctx, g.ID)
	if err != nil {
		return fmt.Errorf("read highest sequence: %w", err)
	}
	w := h.cfg.UploadWindow
	if seq > highest && seq-highest > w {
		return &windowError{grant: g.ID, seq: seq, highest: highest, to: highest + w, window: w}
	}
	return nil
}
