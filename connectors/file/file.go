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
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"gopkg.in/yaml.v3"

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
		SinkConf:   func() connectors.SinkConfig { return NewSinkConfig() },
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
	// FileMode is the mode every received file gets, whatever mode it had
	// at the provider.
	FileMode Mode `yaml:"file_mode"`
	// DirMode is the mode of the folders the sink makes.
	DirMode Mode `yaml:"dir_mode"`
}

// NewSinkConfig returns the defaults.
func NewSinkConfig() *SinkConfig {
	return &SinkConfig{FileMode: Mode(DefaultFileMode), DirMode: Mode(DefaultDirMode)}
}

// Validate checks the entry and gathers every problem.
func (c *SinkConfig) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path is required: the folder received files go to"))
	} else if !filepath.IsAbs(c.Path) {
		errs = append(errs, fmt.Errorf("path %q must be absolute", c.Path))
	}
	// The agent reads what it wrote (to verify it, to finish a file after a
	// crash) and makes and removes entries in its folders.
	if c.FileMode&0o600 != 0o600 {
		errs = append(errs, fmt.Errorf("file_mode %s must let the owner (the agent) read and write: use 0600 or more, e.g. 0640", c.FileMode))
	}
	if c.DirMode&0o700 != 0o700 {
		errs = append(errs, fmt.Errorf("dir_mode %s must let the owner (the agent) list, enter and change folders: use 0700 or more, e.g. 0750", c.DirMode))
	}
	return errors.Join(errs...)
}

// OpenSink prepares the target folder.
func (c *SinkConfig) OpenSink(log *slog.Logger) (connectors.Sink, error) {
	return newSink(c.Path, fs.FileMode(c.FileMode), fs.FileMode(c.DirMode), log)
}

// Mode is a permission mode written in octal, as chmod takes it: 0640 (or
// 0o640, or quoted). Only the permission bits are allowed.
type Mode fs.FileMode

// UnmarshalYAML implements yaml.Unmarshaler.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimPrefix(strings.TrimPrefix(n.Value, "0o"), "0O")
	u, err := strconv.ParseUint(v, 8, 32)
	if n.Kind != yaml.ScalarNode || err != nil || u > 0o777 {
		return fmt.Errorf("mode %q: want octal permission bits such as 0640", n.Value)
	}
	*m = Mode(u)
	return nil
}

// String prints the mode in octal.
func (m Mode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

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
