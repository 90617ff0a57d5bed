package central

import (
	"strings"
	"testing"
	"time"
)

// TestExampleConfig loads configs/central.yaml so the example cannot rot.
func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../configs/central.yaml")
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if d := DefaultConfig(); c.Listen != d.Listen || c.Retention != d.Retention || c.TokenTTL != d.TokenTTL || c.CertValidity != d.CertValidity ||
		c.CallTimeout != d.CallTimeout || c.CallRate != d.CallRate || c.CallQuota != d.CallQuota ||
		c.UploadWindow != d.UploadWindow || c.ProviderQuota != d.ProviderQuota || c.PartialMaxAge != d.PartialMaxAge ||
		c.MaxAnonymousConns != d.MaxAnonymousConns {
		t.Errorf("example's stated defaults differ from the built-in ones: %+v vs %+v", c, d)
	}
}

// TestConfigBounds: each of the hub's bounds on providers and connections
// refuses a value that would disable it, naming the key and a good value.
func TestConfigBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"window zero", func(c *Config) { c.UploadWindow = 0 }, "upload_window 0: use 1 to 1048576"},
		{"window huge", func(c *Config) { c.UploadWindow = 1 << 40 }, "upload_window"},
		{"quota tiny", func(c *Config) { c.ProviderQuota = 1024 }, "provider_quota 1KiB: use at least 1MiB"},
		{"partials forever", func(c *Config) { c.PartialMaxAge = 30 * 24 * time.Hour }, "partial_max_age 720h0m0s: use 1m to 168h"},
		{"no anonymous", func(c *Config) { c.MaxAnonymousConns = 0 }, "max_anonymous_conns 0: use 1 to 65536"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.set(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	if c := DefaultConfig(); c.Validate() != nil {
		t.Errorf("defaults: %v", c.Validate())
	}
}
