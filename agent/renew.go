package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"github.com/qianzhi/qianzhi/pkg/pki"
)

// renewAt is when a certificate should be renewed: with a third of its
// life left (as ACME clients do), which leaves two thirds of that third
// for retries while the hub is away.
func renewAt(c *x509.Certificate) time.Time {
	return c.NotAfter.Add(-c.NotAfter.Sub(c.NotBefore) / 3)
}

// renewLoop renews the node's certificate before it expires, with the same
// key, over the node's own connection. New connections present the new
// certificate at once; the hub accepts the old one until the node has
// moved over, so no request fails on the way.
func (a *Agent) renewLoop(ctx context.Context) {
	var floor time.Duration // after a renewal: never renew again sooner
	for {
		leaf := a.id.leaf()
		wait := max(time.Until(renewAt(leaf)), floor)
		floor = 0
		switch {
		case time.Now().After(leaf.NotAfter):
			// The hub refuses an expired certificate at the handshake:
			// only a new enrolment helps. Say so, now and then.
			a.fail(errRenew)
			a.log.Error("the node certificate has expired: ask the hub operator for a new token ('qz-central node token NODE'), move the identity folder away and enrol again", "expired", leaf.NotAfter)
			wait = 10 * time.Minute
		case wait <= 0:
			err := a.renew(ctx)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				// A clock ahead of the hub's, or a very short validity,
				// could make the new certificate due at once.
				floor = max(leaf.NotAfter.Sub(leaf.NotBefore)/10, 5*time.Second)
				continue
			}
			a.fail(errRenew)
			a.log.Warn("certificate not renewed yet; trying again", "expires", leaf.NotAfter, "err", err)
			// Retry sooner as expiry nears: a tenth of what is left, 5 s to 10 min.
			wait = min(max(time.Until(leaf.NotAfter)/10, 5*time.Second), 10*time.Minute)
		}
		t := time.NewTimer(min(wait, time.Hour)) // an hour at most: the clock may jump
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// renew gets a new certificate for the node's key and stores it.
func (a *Agent) renew(ctx context.Context) error {
	key, ok := a.id.Cert.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("the node key cannot sign a certificate request")
	}
	csr, err := pki.NewCSR(key)
	if err != nil {
		return err
	}
	var resp api.RenewResponse
	if err := a.call(ctx, http.MethodPost, "/v1/renew", api.RenewRequest{CSR: string(csr)}, &resp); err != nil {
		return err
	}
	cert, err := a.id.adopt([]byte(resp.Cert))
	if err != nil {
		return err
	}
	a.log.Info("certificate renewed", "serial", cert.Leaf.SerialNumber.Text(16), "expires", cert.Leaf.NotAfter)
	// New requests move to a connection made with the new certificate;
	// those running finish on the old one.
	if err := a.hub.Refresh(ctx, 10*time.Minute); err != nil {
		a.log.Warn("still on the connection made with the old certificate", "err", err)
	}
	return nil
}

// adopt checks a renewed certificate (this node's name and key, issued by
// its CA), writes it over the old one and presents it from now on.
func (id *Identity) adopt(certPEM []byte) (*tls.Certificate, error) {
	c, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("hub sent a bad certificate: %w", err)
	}
	if c.Subject.CommonName != id.NodeID || !publicKeysEqual(c.PublicKey, id.Cert.PrivateKey.(crypto.Signer).Public()) {
		return nil, errors.New("hub sent a certificate for another node or key; refusing it")
	}
	pool := x509.NewCertPool()
	pool.AddCert(id.CA)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("renewed certificate: %w", err)
	}
	if id.dir != "" {
		if err := fsutil.WriteFileAtomic(filepath.Join(id.dir, fileNodeCert), certPEM, 0o644); err != nil {
			return nil, fmt.Errorf("store renewed certificate: %w", err)
		}
	}
	tc := &tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: id.Cert.PrivateKey, Leaf: c}
	id.cur.Store(tc)
	return tc, nil
}
