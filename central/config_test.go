package central

import "testing"

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
