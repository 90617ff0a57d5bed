package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// spool accounts for the bytes of sealed batches, waiting for upload or
// kept after it until the consumer's receipt is known, and makes producers
// wait when the quota is reached (backpressure). Only kept batches are let
// go for room, oldest first (see reserveSpool); a batch not yet uploaded is
// never dropped: extraction just pauses.
type spool struct {
	dir   string
	quota int64

	mu    sync.Mutex
	used  int64
	freed chan struct{} // closed and replaced on every release
}

// openSpool sums the indexed batches and removes files the index does not
// know: temporary files and batches written by a process that died before
// its commit. Their sources' checkpoints did not move, so they are
// produced again. A file any row of the index names is never removed here,
// whatever the row's state.
func openSpool(dir string, quota int64, st *State) (*spool, error) {
	s := &spool{dir: dir, quota: quota, freed: make(chan struct{})}
	es, err := st.spoolAll()
	if err != nil {
		return nil, err
	}
	known := map[string]bool{}
	for _, e := range es {
		known[e.File] = true
		_, err := os.Stat(filepath.Join(dir, e.File))
		switch {
		case e.State == spoolQuarantined && err == nil:
			// Quarantined by an earlier version only for the id it was
			// given (see migrateSpool), or a crash came between marking
			// it and moving its file: upload it; the hub checks it.
			if _, err := st.setSpoolState(e.ID, spoolQuarantined, spoolWaiting); err != nil {
				return nil, err
			}
			s.used += e.Size
		case e.State == spoolQuarantined:
		case err != nil && e.State == spoolKept:
			// The hub holds it; should it lose its copy, the batch is
			// made up for like any batch no longer kept.
			if _, err := st.unspool(context.Background(), e, ""); err != nil {
				return nil, err
			}
		case err != nil:
			// Listed but gone (the folder was tampered with): set it aside
			// so it does not block the line forever; status reports it.
			st.setAside(e.ID)
			st.setStopped(e.Grant, "provider", fmt.Sprintf("batch %d is missing from the spool folder: %v", e.Seq, err))
		default:
			s.used += e.Size
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, d := range ents {
		if !d.IsDir() && !known[d.Name()] {
			os.Remove(filepath.Join(dir, d.Name()))
		}
	}
	return s, nil
}

// tryReserve takes n bytes of the quota if they fit now. A batch always
// fits into an empty spool, so a quota smaller than one batch cannot
// deadlock.
func (s *spool) tryReserve(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used == 0 || s.used+n <= s.quota {
		s.used += n
		return true
	}
	return false
}

// changed returns a channel closed at the next release or wake.
func (s *spool) changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.freed
}

// add counts n bytes that must be spooled whatever the quota (a batch
// that makes up for a lost one is a few hundred bytes).
func (s *spool) add(n int64) {
	s.mu.Lock()
	s.used += n
	s.mu.Unlock()
}

// release returns n bytes to the quota.
func (s *spool) release(n int64) {
	s.mu.Lock()
	s.used -= n
	s.mu.Unlock()
	s.wake()
}

// wake tells producers waiting for room that something changed: bytes were
// released, or a batch became kept and may be let go for room.
func (s *spool) wake() {
	s.mu.Lock()
	close(s.freed)
	s.freed = make(chan struct{})
	s.mu.Unlock()
}

// usage reports the bytes in use and the quota.
func (s *spool) usage() (int64, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.quota
}
