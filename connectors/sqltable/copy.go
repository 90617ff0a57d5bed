package sqltable

import (
	"context"
	"fmt"

	"github.com/qianzhi/qianzhi/connectors"
)

// StartCopy makes the grant's next batches a new snapshot of the whole
// table (a full copy, 批量复制). Where incremental reads stood does not
// matter: the new snapshot holds every committed change, and incremental
// reads start over from the moment it begins. A reconciliation in progress
// is dropped (the copy supersedes it); one requested stays requested.
func (s *source) StartCopy(ctx context.Context, st connectors.State, ch *connectors.Changes) (connectors.Size, error) {
	sh, err := s.schema(ctx, nil)
	if err != nil {
		return connectors.Size{}, err
	}
	var n int64
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+sh.from).Scan(&n); err != nil {
		return connectors.Size{}, fmt.Errorf("resource %s: count rows: %w", s.cfg.ID, err)
	}
	s.drop(st.Scope())
	for _, k := range []string{keyPhase, keySnapKey, keySnapTok, keyIncFrom, keyMark, KeyReconcileWait, KeyReconcileDiff, keyReconcilePlan} {
		ch.Delete(k)
	}
	return connectors.Size{Rows: n}, nil
}

// Copying reports whether the grant's snapshot is still being read.
func (s *source) Copying(st connectors.State) (bool, error) {
	ph, _, err := st.Get(keyPhase)
	return len(ph) == 0 || string(ph) == "snapshot", err
}
