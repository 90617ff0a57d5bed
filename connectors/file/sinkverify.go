package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
)

// maxMismatches bounds the differences a verify receipt lists.
const maxMismatches = 1000

// compare checks the folder against a provider's manifest (JSON lines of
// ManifestEntry): files missing here, files whose content differs (by
// SHA-256), and files here that the provider never sent.
func (s *Sink) compare(ctx context.Context, manifest io.Reader) ([]string, error) {
	var diff []string
	more := 0
	note := func(what, rel string) {
		if len(diff) < maxMismatches {
			diff = append(diff, what+": "+rel)
		} else {
			more++
		}
	}
	want := map[string]bool{}
	dec := json.NewDecoder(manifest)
	for {
		var m ManifestEntry
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("read the manifest: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		want[m.Path] = true
		dst, err := s.target(m.Path)
		if err != nil {
			return nil, err
		}
		sum, err := s.hashTarget(dst)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			note("missing", m.Path)
		case errors.Is(err, errNotRegular) || errors.Is(err, errLink):
			note("differs", m.Path) // a link or a folder where the file should be
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", m.Path, err)
		case sum != m.SHA256:
			note("differs", m.Path)
		}
	}
	err := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == s.tmp {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); !want[rel] {
			note("extra", rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.root, err)
	}
	if more > 0 {
		diff = append(diff, fmt.Sprintf("… and %d more", more))
	}
	return diff, nil
}
