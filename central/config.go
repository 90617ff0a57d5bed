// Package central is the hub, qz-central: it enrols nodes and runs their CA,
// keeps resources and grants, verifies, stores and routes sealed batches
// between agents, records receipts, and audits every change in a
// hash-chained log.
package central

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/qianzhi/qianzhi/configs"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/config"
	"github.com/qianzhi/qianzhi/pkg/metrics"
)

// Config is qz-central's configuration file.
type Config struct {
	// Listen is the address for both QUIC (UDP) and TLS/TCP.
	Listen string `yaml:"listen"`
	// QUIC and TCP enable each transport.
	QUIC bool `yaml:"quic"`
	TCP  bool `yaml:"tcp"`
	// StateDir holds the database, the CA and the payload folder.
	StateDir string `yaml:"state_dir"`
	// Hosts are the names and addresses agents use to reach the hub; they
	// go into the hub's server certificate at init.
	Hosts []string `yaml:"hosts"`
	// Retention is how long a batch's payload is kept after its receipt.
	Retention time.Duration `yaml:"retention"`
	// TokenTTL is how long an enrolment token stays valid.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// CertValidity is the lifetime of node certificates.
	CertValidity time.Duration `yaml:"cert_validity"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// MetricsListen is where /metrics and /healthz are served: loopback by
	// default, "off" for none.
	MetricsListen string `yaml:"metrics_listen"`
	// Deadlines are in working days (see HolidaysDir).
	Deadlines Deadlines `yaml:"deadlines"`
	// HolidaysDir holds official holiday calendars (YEAR.yaml) beside the
	// built-in ones; a year there replaces the built-in one.
	HolidaysDir string `yaml:"holidays_dir"`
	// CallTimeout is how long a query or verify call waits for the
	// provider's answer (a consumer may ask for less).
	CallTimeout time.Duration `yaml:"call_timeout"`
	// CallRate is the calls a second a grant allows when its provider set
	// no rate in the approval.
	CallRate float64 `yaml:"call_rate"`
	// CallQuota is the calls a day (CST) a grant allows when its provider
	// set no quota.
	CallQuota int `yaml:"call_quota"`
	// AuditCheckpointInterval is how often the hub signs a checkpoint of
	// its audit log for the agents to keep, when records were added.
	AuditCheckpointInterval time.Duration `yaml:"audit_checkpoint_interval"`
	// UploadWindow is how far ahead of a grant's highest stored sequence
	// number a provider may upload: a provider cannot park uploads at
	// sequence numbers the line will not reach for years.
	UploadWindow uint64 `yaml:"upload_window"`
	// ProviderQuota bounds the bytes one provider holds at the hub:
	// batches stored and not yet delivered under active grants, plus
	// unfinished uploads.
	ProviderQuota config.Size `yaml:"provider_quota"`
	// PartialMaxAge is how long an unfinished upload is kept untouched
	// before it is deleted (the provider then sends it again from byte 0).
	PartialMaxAge time.Duration `yaml:"partial_max_age"`
	// MaxAnonymousConns caps the connections open at once without a
	// client certificate (enrolment and ping need none): anyone who
	// reaches the port can open those.
	MaxAnonymousConns int `yaml:"max_anonymous_conns"`
}

// DefaultConfig returns the defaults used when a key is absent.
func DefaultConfig() Config {
	return Config{
		Listen:        "127.0.0.1:7443",
		QUIC:          true,
		TCP:           true,
		StateDir:      "/var/lib/qianzhi/central",
		Hosts:         []string{"127.0.0.1", "localhost"},
		Retention:     7 * 24 * time.Hour,
		TokenTTL:      24 * time.Hour,
		CertValidity:  365 * 24 * time.Hour,
		LogLevel:      "info",
		MetricsListen: "127.0.0.1:9465",
		HolidaysDir:   "/etc/qianzhi/holidays",
		Deadlines:     Deadlines{CatalogReview: 10, HubReview: 2, ProviderReview: 5, Feedback: 5},
		CallTimeout:   10 * time.Second,
		CallRate:      20,
		CallQuota:     10000,

		AuditCheckpointInterval: time.Minute,

		UploadWindow:  1024,
		ProviderQuota: 16 << 30,
		PartialMaxAge: 6 * time.Hour,

		MaxAnonymousConns: 256,
	}
}

// Deadlines of the workflow's steps, in working days.
type Deadlines struct {
	// CatalogReview is the hub's review of a new or changed catalog entry.
	CatalogReview int `yaml:"catalog_review"`
	// HubReview is the hub's compliance check of an application.
	HubReview int `yaml:"hub_review"`
	// ProviderReview is the provider's decision on a conditional application.
	ProviderReview int `yaml:"provider_review"`
	// Feedback is the provider's answer to a reported error (纠错).
	Feedback int `yaml:"feedback"`
}

// Calendar loads the working-day calendar: the built-in years, then the
// files in HolidaysDir (a missing folder is fine).
func (c *Config) Calendar() (*calendar.Calendar, error) {
	dirs := []fs.FS{configs.Holidays}
	if fi, err := os.Stat(c.HolidaysDir); err == nil && fi.IsDir() {
		dirs = append(dirs, os.DirFS(c.HolidaysDir))
	}
	return calendar.Load(dirs...)
}

// LoadConfig reads and validates a config file; path "" means defaults.
func LoadConfig(path string) (Config, error) {
	c := DefaultConfig()
	if path != "" {
		if err := config.Load(path, &c); err != nil {
			return c, err
		}
	}
	if err := c.Validate(); err != nil {
		if path == "" {
			path = "defaults"
		}
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate gathers every problem.
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: want host:port, e.g. 0.0.0.0:7443", c.Listen))
	}
	if !c.QUIC && !c.TCP {
		errs = append(errs, errors.New("quic and tcp are both off: enable at least one"))
	}
	for name, d := range map[string]int{"catalog_review": c.Deadlines.CatalogReview, "hub_review": c.Deadlines.HubReview, "provider_review": c.Deadlines.ProviderReview, "feedback": c.Deadlines.Feedback} {
		if d < 1 || d > 60 {
			errs = append(errs, fmt.Errorf("deadlines.%s %d: use 1 to 60 working days", name, d))
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir %q must be an absolute path", c.StateDir))
	}
	if len(c.Hosts) == 0 {
		errs = append(errs, errors.New("hosts is empty: list the names or addresses agents dial"))
	}
	if c.Retention < 0 {
		errs = append(errs, errors.New("retention must not be negative"))
	}
	if c.TokenTTL <= 0 {
		errs = append(errs, errors.New("token_ttl must be positive"))
	}
	if err := metrics.CheckAddr(c.MetricsListen); err != nil {
		errs = append(errs, err)
	}
	if c.CertValidity < time.Minute {
		errs = append(errs, errors.New("cert_validity must be at least 1m"))
	}
	if c.CallTimeout < 100*time.Millisecond || c.CallTimeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("call_timeout %s: use 100ms to 5m", c.CallTimeout))
	}
	if !(c.CallRate > 0) || math.IsInf(c.CallRate, 0) {
		errs = append(errs, fmt.Errorf("call_rate %g: use a positive number of calls a second, e.g. 20", c.CallRate))
	}
	if c.CallQuota <= 0 {
		errs = append(errs, fmt.Errorf("call_quota %d: use a positive number of calls a day, e.g. 10000", c.CallQuota))
	}
	if c.AuditCheckpointInterval < time.Second || c.AuditCheckpointInterval > time.Hour {
		errs = append(errs, fmt.Errorf("audit_checkpoint_interval %s: use 1s to 1h (default 1m): records added since the newest checkpoint an agent holds can be cut unseen", c.AuditCheckpointInterval))
	}
	if c.UploadWindow < 1 || c.UploadWindow > 1<<20 {
		errs = append(errs, fmt.Errorf("upload_window %d: use 1 to 1048576 sequence numbers, e.g. 1024", c.UploadWindow))
	}
	if c.ProviderQuota < 1<<20 {
		errs = append(errs, fmt.Errorf("provider_quota %s: use at least 1MiB, and more than the largest batch a provider seals, e.g. 16GiB", c.ProviderQuota))
	}
	if c.PartialMaxAge < time.Minute || c.PartialMaxAge > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("partial_max_age %s: use 1m to 168h, e.g. 6h", c.PartialMaxAge))
	}
	if c.MaxAnonymousConns < 1 || c.MaxAnonymousConns > 65536 {
		errs = append(errs, fmt.Errorf("max_anonymous_conns %d: use 1 to 65536, e.g. 256", c.MaxAnonymousConns))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: use debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// Paths of the hub's files under StateDir.
func (c *Config) dbPath() string     { return filepath.Join(c.StateDir, "central.db") }
func (c *Config) caCert() string     { return filepath.Join(c.StateDir, "ca.crt") }
func (c *Config) caKey() string      { return filepath.Join(c.StateDir, "ca.key") }
func (c *Config) serverCert() string { return filepath.Join(c.StateDir, "server.crt") }
func (c *Config) serverKey() string  { return filepath.Join(c.StateDir, "server.key") }
func (c *Config) payloadDir() string { return filepath.Join(c.StateDir, "payload") }
func (c *Config) partialDir() string { return filepath.Join(c.StateDir, "payload", "partial") }
