package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// spool accounts for the bytes of sealed batches waiting for upload and
// makes producers wait when the quota is reached (backpressure): nothing
// is dropped, extraction just pauses.
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

// reserve waits until n more bytes fit under the quota.
func (s *spool) reserve(ctx context.Context, n int64) error {
	for {
		s.mu.Lock()
		c := s.freed
		s.mu.Unlock()
		if s.tryReserve(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c:
		}
	}
}

// release returns n bytes to the quota.
func (s *spool) release(n int64) {
	s.mu.Lock()
	s.used -= n
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
