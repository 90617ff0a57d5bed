package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/receipt"
)

// State keys, in a grant's sink scope, of its destruction.
const (
	keyKind        = "kind"         // the kind of the batches applied: files or rows
	keyDestroyed   = "destroyed"    // the signed destruction receipt (JSON)
	keyDestroySent = "destroy_sent" // the hub has it
)

// destroyLoop destroys what this node received under grants that ended
// with the order to destroy (数据销毁), and sends each signed destruction
// receipt until the hub has it.
func (a *Agent) destroyLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Poll)
	defer t.Stop()
	for {
		a.mu.Lock()
		gen := a.grantsGen
		var due []api.GrantInfo
		for _, g := range a.grants {
			if g.Consumer == a.id.NodeID && !g.Active && g.Destroy {
				due = append(due, g)
			}
		}
		a.mu.Unlock()
		for _, g := range due {
			if err := a.destroyGrant(ctx, g); err != nil && ctx.Err() == nil {
				a.log.Error("cannot destroy the data of an ended grant yet; retrying", "grant", g.ID, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-gen:
		case <-t.C:
		}
	}
}

// subscribed reports whether the config has a subscription for resource.
func (a *Agent) subscribed(resource string) bool {
	for _, e := range a.config().Subscriptions {
		if e.ID == resource {
			return true
		}
	}
	return false
}

func (a *Agent) destroyGrant(ctx context.Context, g api.GrantInfo) error {
	scope := "sink/" + g.ID
	v := a.state.view(scope)
	if _, sent, err := v.Get(keyDestroySent); err != nil || sent {
		return err
	}
	raw, done, err := v.Get(keyDestroyed)
	if err != nil {
		return err
	}
	if !done {
		a.applyMu.Lock()
		defer a.applyMu.Unlock()
		kind, _, err := v.Get(keyKind)
		if err != nil {
			return err
		}
		if string(kind) == batch.KindRows && !a.subscribed(g.Resource) {
			return fmt.Errorf("rows of %s arrived through a subscription that is no longer in the config: restore it so they can be destroyed", g.Resource)
		}
		s, err := a.sink(g.Resource, batch.KindFiles)
		if err != nil {
			return err
		}
		d, ok := s.(connectors.Destroyer)
		if !ok {
			return fmt.Errorf("the subscription of %s cannot destroy what it received", g.Resource)
		}
		var ch connectors.Changes
		what, err := d.Destroy(ctx, g.ID, v, &ch)
		if err != nil {
			return err
		}
		// Batches downloaded but not applied were received too.
		parts, _ := filepath.Glob(filepath.Join(a.cfg.inboxDir(), g.ID+"-*.part"))
		for _, p := range parts {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		rc, err := receipt.SignDestruction(receipt.Destruction{Resource: g.Resource, Grant: g.ID, Provider: g.Provider,
			Consumer: a.id.NodeID, Destroyed: time.Now(), What: what}, a.id.Seal)
		if err != nil {
			return err
		}
		if raw, err = json.Marshal(rc); err != nil {
			return err
		}
		ch.Put(keyDestroyed, raw)
		if err := a.state.commitChanges(ctx, scope, &ch); err != nil {
			return err
		}
		a.log.Info("destroyed the data received under an ended grant", "grant", g.ID, "resource", g.Resource, "what", what)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.hub.URL("/v1/destructions"), bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.hub.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("hub refused the destruction receipt: %s", apiError(resp))
	}
	var ch connectors.Changes
	ch.Put(keyDestroySent, []byte(time.Now().UTC().Format(time.RFC3339)))
	return a.state.commitChanges(ctx, scope, &ch)
}
