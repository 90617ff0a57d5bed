package central

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/pki"
)

func TestAdoptable(t *testing.T) {
	ca, err := pki.NewCA("test", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	der, _ := pki.NewCSR(key)
	csr, _ := pki.ParseCSR(der)
	issue := func() *x509.Certificate {
		c, err := ca.IssueNode(csr, "n1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	before := issue() // the certificate the backup knows
	time.Sleep(1100 * time.Millisecond)
	taken := time.Now()
	time.Sleep(1100 * time.Millisecond)
	after := issue() // renewed after the backup
	known := store.Node{ID: "n1", Status: store.NodeActive, CertSerial: before.SerialNumber.Text(16), CertExpiry: before.NotAfter}
	for _, c := range []struct {
		name     string
		restored time.Time
		node     store.Node
		cert     *x509.Certificate
		want     bool
	}{
		{"renewed after the backup", taken, known, after, true},
		{"never restored", time.Time{}, known, after, false},
		{"issued before the backup", taken, store.Node{ID: "n1", Status: store.NodeActive, CertExpiry: before.NotAfter.Add(-time.Minute)}, before, false},
		{"backup taken after it was issued", time.Now().Add(time.Second), known, after, false},
		{"revoked node", taken, store.Node{ID: "n1", Status: store.NodeRevoked, CertExpiry: before.NotAfter}, after, false},
		{"not newer than the known one", taken, store.Node{ID: "n1", Status: store.NodeActive, CertExpiry: after.NotAfter}, after, false},
	} {
		if got := adoptable(c.restored, c.node, c.cert); got != c.want {
			t.Errorf("%s: adoptable = %v, want %v", c.name, got, c.want)
		}
	}
}
