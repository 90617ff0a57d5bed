// Package file is the folder connector: a provider resource is a folder
// with include and exclude globs; a consumer subscription is the folder the
// files arrive in.
//
// Files are found with fsnotify plus a periodic rescan (fsnotify misses
// events on overflow and on some filesystems) and sent only once stable.
// Large files travel in chunks, each with its own SHA-256, one chunk a batch,
// so an interrupted transfer resumes chunk by chunk. The consumer writes each
// file under a temporary name, fsyncs, checks the whole-file hash, and only
// then renames it into place: a partial file never appears under its name.
package file

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/config"
)

// Kind is the registry name of this connector.
const Kind = "file"

// TempDir is the folder inside a consumer's target where files are
// assembled before their rename. Sources skip it.
const TempDir = ".qz-tmp"

func init() {
	connectors.Register(connectors.Kind{
		Name:       Kind,
		SourceConf: func() connectors.SourceConfig { return NewSourceConfig() },
		SinkConf:   func() connectors.SinkConfig { return &SinkConfig{} },
	})
}

// SourceConfig is a provider's folder resource.
type SourceConfig struct {
	connectors.Common `yaml:",inline"`
	// Path is the folder to publish.
	Path string `yaml:"path"`
	// Include lists globs (with **) of files to send; default everything.
	Include []string `yaml:"include"`
	// Exclude lists globs of files never to send.
	Exclude []string `yaml:"exclude"`
	// PropagateDeletes makes a file deleted here be deleted at consumers.
	PropagateDeletes bool `yaml:"propagate_deletes"`
	// Settle is how long a file must stay unchanged before it is sent.
	Settle time.Duration `yaml:"settle"`
	// Rescan is the period of the full rescan that catches what fsnotify missed.
	Rescan time.Duration `yaml:"rescan"`
	// ChunkSize is the size of the pieces large files travel in.
	ChunkSize config.Size `yaml:"chunk_size"`
}

// NewSourceConfig returns the defaults.
func NewSourceConfig() *SourceConfig {
	return &SourceConfig{
		Include:   []string{"**"},
		Settle:    2 * time.Second,
		Rescan:    60 * time.Second,
		ChunkSize: 4 << 20,
	}
}

// Validate checks the entry and gathers every problem.
func (c *SourceConfig) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path is required: the folder to publish"))
	} else if !filepath.IsAbs(c.Path) {
		errs = append(errs, fmt.Errorf("path %q must be absolute", c.Path))
	} else if fi, err := os.Stat(c.Path); err != nil {
		errs = append(errs, fmt.Errorf("path %q: %w", c.Path, err))
	} else if !fi.IsDir() {
		errs = append(errs, fmt.Errorf("path %q is not a folder", c.Path))
	}
	for _, g := range append(append([]string{}, c.Include...), c.Exclude...) {
		if !doublestar.ValidatePattern(g) {
			errs = append(errs, fmt.Errorf("glob %q is malformed", g))
		}
	}
	if c.Settle < 0 {
		errs = append(errs, errors.New("settle must not be negative"))
	}
	if c.Rescan < time.Second {
		errs = append(errs, errors.New("rescan must be at least 1s"))
	}
	if c.ChunkSize < 64<<10 || c.ChunkSize > 64<<20 {
		errs = append(errs, fmt.Errorf("chunk_size %s is out of range: use 64KiB to 64MiB", c.ChunkSize))
	}
	return errors.Join(errs...)
}

// OpenSource starts watching the folder.
func (c *SourceConfig) OpenSource(log *slog.Logger) (connectors.Source, error) {
	return NewSource(c, log)
}

// SinkConfig is a consumer's target folder.
type SinkConfig struct {
	connectors.Common `yaml:",inline"`
	// Path is the folder files arrive in; it is created if missing.
	Path string `yaml:"path"`
}

// Validate checks the entry.
func (c *SinkConfig) Validate() error {
	if c.Path == "" {
		return errors.New("path is required: the folder received files go to")
	}
	if !filepath.IsAbs(c.Path) {
		return fmt.Errorf("path %q must be absolute", c.Path)
	}
	return nil
}

// OpenSink prepares the target folder.
func (c *SinkConfig) OpenSink(log *slog.Logger) (connectors.Sink, error) {
	return NewSink(c.Path, log)
}

func (c *SourceConfig) matches(rel string) bool {
	inc := false
	for _, g := range c.Include {
		if ok, _ := doublestar.Match(g, rel); ok {
			inc = true
			break
		}
	}
	if !inc {
		return false
	}
	for _, g := range c.Exclude {
		if ok, _ := doublestar.Match(g, rel); ok {
			return false
		}
	}
	return true
}
