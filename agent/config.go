// Package agent is qz-agent, the program on each department's front-end
// exchange server: it enrols with the hub, extracts, seals and spools
// batches from the department's resources, uploads them, and receives,
// verifies and applies what other departments share with it, answering each
// batch with a signed receipt.
package agent

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qianzhi/qianzhi/connectors"
	_ "github.com/qianzhi/qianzhi/connectors/file"   // registers the file kind
	_ "github.com/qianzhi/qianzhi/connectors/mysql"  // registers the mysql kind
	_ "github.com/qianzhi/qianzhi/connectors/oracle" // registers the oracle kind
	_ "github.com/qianzhi/qianzhi/connectors/sqlite" // registers the sqlite kind
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/config"
	"github.com/qianzhi/qianzhi/pkg/metrics"
	"github.com/qianzhi/qianzhi/pkg/throttle"
	"github.com/qianzhi/qianzhi/transport"
)

// DefaultConfigPath is read when --config is not given and it exists.
const DefaultConfigPath = "/etc/qianzhi/agent.yaml"

// Config is qz-agent's configuration file.
type Config struct {
	// Hub is the hub's host:port, the same for QUIC and TLS/TCP.
	Hub string `yaml:"hub"`
	// Transport is auto (QUIC, falling back to TLS/TCP), quic or tcp.
	Transport string `yaml:"transport"`
	// RetryQUIC is how often, while on the TCP fallback, QUIC is tried again.
	RetryQUIC time.Duration `yaml:"retry_quic"`
	// StateDir holds the identity, the state database, spool and inbox.
	StateDir string `yaml:"state_dir"`
	Spool    struct {
		// Dir defaults to StateDir/spool.
		Dir string `yaml:"dir"`
		// Quota bounds the spool; extraction pauses when it is full.
		Quota config.Size `yaml:"quota"`
	} `yaml:"spool"`
	Batch struct {
		// MaxBytes is the target body size of one batch.
		MaxBytes config.Size `yaml:"max_bytes"`
		// Compression is off, fast (fastest), default, better or best (zstd).
		Compression string `yaml:"compression"`
	} `yaml:"batch"`
	// Limits bound the whole agent: bytes uploaded and rows extracted per
	// second over all resources, and when full copies may run.
	Limits throttle.Limits `yaml:"limits"`
	// Poll is the retry interval while the hub cannot be reached; grant
	// changes themselves arrive at once through a long poll.
	Poll time.Duration `yaml:"poll"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// MetricsListen is where /metrics and /healthz are served: loopback by
	// default, "off" for none.
	MetricsListen string `yaml:"metrics_listen"`
	// CallAPI is the local endpoint through which the department's own
	// applications make query and verify calls without handling
	// certificates.
	CallAPI struct {
		// Listen is loopback by default; "off" for none.
		Listen string `yaml:"listen"`
		// TokenFile holds the bearer token applications present; default
		// StateDir/call-api.token, created (0640) on first start.
		TokenFile string `yaml:"token_file"`
	} `yaml:"call_api"`
	// Resources are what this department publishes.
	Resources []Entry `yaml:"resources"`
	// Subscriptions say where received resources go; a granted resource
	// without one lands in StateDir/received/RESOURCE.
	Subscriptions []Entry `yaml:"subscriptions"`
}

// Entry is one resource or subscription; its keys depend on its kind.
type Entry struct {
	connectors.Common
	node   yaml.Node
	Source connectors.SourceConfig `yaml:"-"`
	Sink   connectors.SinkConfig   `yaml:"-"`
}

// UnmarshalYAML keeps the raw entry for the kind to decode.
func (e *Entry) UnmarshalYAML(n *yaml.Node) error {
	e.node = *n
	return n.Decode(&e.Common)
}

// DefaultConfig returns the defaults used when a key is absent.
func DefaultConfig() Config {
	var c Config
	c.Hub = "127.0.0.1:7443"
	c.Transport = transport.Auto
	c.RetryQUIC = 5 * time.Minute
	c.StateDir = "/var/lib/qianzhi/agent"
	c.Spool.Quota = 1 << 30
	c.Batch.MaxBytes = 4 << 20
	c.Batch.Compression = "fast"
	c.Poll = 5 * time.Second
	c.LogLevel = "info"
	c.MetricsListen = "127.0.0.1:9464"
	c.CallAPI.Listen = "127.0.0.1:9480"
	return c
}

// LoadConfig reads, decodes and validates a config file; "" means defaults.
func LoadConfig(path string) (Config, error) {
	c := DefaultConfig()
	name := path
	if path == "" {
		name = "defaults"
	} else if err := config.Load(path, &c); err != nil {
		return c, err
	}
	var errs []error
	for i := range c.Resources {
		errs = append(errs, c.Resources[i].decode(name, fmt.Sprintf("resources[%d]", i), true)...)
	}
	for i := range c.Subscriptions {
		errs = append(errs, c.Subscriptions[i].decode(name, fmt.Sprintf("subscriptions[%d]", i), false)...)
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	return c, errors.Join(errs...)
}

func (e *Entry) decode(file, where string, source bool) []error {
	line := e.node.Line
	at := func(err error) error { return &config.Error{File: file, Line: line, Msg: where + ": " + err.Error()} }
	if e.ID == "" {
		return []error{at(errors.New("id is required"))}
	}
	if err := api.ValidID("resource", e.ID); err != nil {
		return []error{at(err)}
	}
	k, err := connectors.Lookup(e.Kind)
	if err != nil {
		return []error{at(err)}
	}
	var target any
	if source {
		if k.SourceConf == nil {
			return []error{at(fmt.Errorf("kind %q cannot be a resource", e.Kind))}
		}
		e.Source = k.SourceConf()
		target = e.Source
	} else {
		if k.SinkConf == nil {
			return []error{at(fmt.Errorf("kind %q cannot be a subscription", e.Kind))}
		}
		e.Sink = k.SinkConf()
		target = e.Sink
	}
	if errs := config.CheckKeys(file, &e.node, reflect.TypeOf(target)); len(errs) > 0 {
		return errs
	}
	if err := e.node.Decode(target); err != nil {
		return []error{at(err)}
	}
	var verr error
	if source {
		verr = e.Source.Validate()
	} else {
		verr = e.Sink.Validate()
	}
	if !source && (e.Copy != nil || e.Limits != nil) {
		verr = errors.Join(verr, errors.New("copy and limits belong with the resource that provides the data, not a subscription"))
	}
	if e.Copy != nil && e.Copy.Every < time.Hour {
		verr = errors.Join(verr, fmt.Errorf("copy.every %s is too short: at least 1h (e.g. 24h; leave copy out for one-off copies with qz-agent copy)", e.Copy.Every))
	}
	if e.Limits != nil {
		verr = errors.Join(verr, e.Limits.Validate())
	}
	if len(e.Calls) > 0 {
		switch {
		case !source:
			verr = errors.Join(verr, errors.New("calls belong with the resource that provides the data, not a subscription"))
		case e.Kind == "file":
			verr = errors.Join(verr, errors.New("calls need a table resource (mysql, oracle or sqlite), not a folder"))
		case e.Catalog == nil:
			verr = errors.Join(verr, errors.New("calls need a catalog entry: consumers find the calls there and apply in mode query or verify"))
		}
		names := map[string]bool{}
		for i := range e.Calls {
			if err := e.Calls[i].Validate(); err != nil {
				verr = errors.Join(verr, err)
			}
			if names[e.Calls[i].Name] {
				verr = errors.Join(verr, fmt.Errorf("call %q is declared twice", e.Calls[i].Name))
			}
			names[e.Calls[i].Name] = true
		}
	}
	if c := e.Catalog; c != nil {
		c.Calls = nil
		for _, d := range e.Calls {
			c.Calls = append(c.Calls, d.CallDecl)
		}
		if !source {
			verr = errors.Join(verr, errors.New("catalog belongs with the resource that provides the data, not a subscription"))
		} else {
			c.Resource = e.ID
			verr = errors.Join(verr, c.Validate())
		}
	}
	if verr != nil {
		return []error{at(fmt.Errorf("%s: %w", e.ID, verr))}
	}
	return nil
}

// Validate checks the agent-wide settings and gathers every problem.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Hub); err != nil {
		errs = append(errs, fmt.Errorf("hub %q: want host:port, e.g. hub.example.gov.cn:7443", c.Hub))
	}
	switch c.Transport {
	case transport.Auto, transport.QUIC, transport.TCP:
	default:
		errs = append(errs, fmt.Errorf("transport %q: use auto, quic or tcp", c.Transport))
	}
	if c.RetryQUIC < time.Second {
		errs = append(errs, errors.New("retry_quic must be at least 1s"))
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir %q must be an absolute path", c.StateDir))
	}
	if c.Spool.Dir != "" && !filepath.IsAbs(c.Spool.Dir) {
		errs = append(errs, fmt.Errorf("spool.dir %q must be an absolute path", c.Spool.Dir))
	}
	if c.Spool.Quota < 16<<20 {
		errs = append(errs, fmt.Errorf("spool.quota %s is too small: at least 16MiB", c.Spool.Quota))
	}
	if c.Batch.MaxBytes < 64<<10 || c.Batch.MaxBytes > 64<<20 {
		errs = append(errs, fmt.Errorf("batch.max_bytes %s is out of range: 64KiB to 64MiB", c.Batch.MaxBytes))
	}
	if _, ok := compressionLevels[c.Batch.Compression]; !ok {
		errs = append(errs, fmt.Errorf("batch.compression %q: use off, fast, default, better or best", c.Batch.Compression))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Poll < 100*time.Millisecond {
		errs = append(errs, errors.New("poll must be at least 100ms"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: use debug, info, warn or error", c.LogLevel))
	}
	if err := metrics.CheckAddr(c.MetricsListen); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := net.SplitHostPort(c.CallAPI.Listen); err != nil && !metrics.Off(c.CallAPI.Listen) {
		errs = append(errs, fmt.Errorf("call_api.listen %q: want HOST:PORT such as 127.0.0.1:9480, or off", c.CallAPI.Listen))
	}
	if c.CallAPI.TokenFile != "" && !filepath.IsAbs(c.CallAPI.TokenFile) {
		errs = append(errs, fmt.Errorf("call_api.token_file %q must be an absolute path", c.CallAPI.TokenFile))
	}
	seen := map[string]bool{}
	for _, e := range c.Resources {
		if seen[e.ID] {
			errs = append(errs, fmt.Errorf("resource %q is declared twice", e.ID))
		}
		seen[e.ID] = true
	}
	seen = map[string]bool{}
	for _, e := range c.Subscriptions {
		if seen[e.ID] {
			errs = append(errs, fmt.Errorf("subscription %q is declared twice", e.ID))
		}
		seen[e.ID] = true
	}
	return errors.Join(errs...)
}

// compressionLevels maps config names to zstd levels (0: off).
var compressionLevels = map[string]int{"off": 0, "fast": 1, "fastest": 1, "default": 2, "better": 3, "best": 4}

func (c *Config) spoolDir() string {
	if c.Spool.Dir != "" {
		return c.Spool.Dir
	}
	return filepath.Join(c.StateDir, "spool")
}
func (c *Config) inboxDir() string    { return filepath.Join(c.StateDir, "inbox") }
func (c *Config) identityDir() string { return filepath.Join(c.StateDir, "identity") }
func (c *Config) dbPath() string      { return filepath.Join(c.StateDir, "agent.db") }

func (c *Config) callTokenFile() string {
	if c.CallAPI.TokenFile != "" {
		return c.CallAPI.TokenFile
	}
	return filepath.Join(c.StateDir, "call-api.token")
}
