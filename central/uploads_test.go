package central

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/config"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

// sealed is a one-file batch for grant g at seq, sealed with the
// provider gaj's seal key, of about size bytes.
func (c *callHub) sealed(g string, seq uint64, size int) []byte {
	c.t.Helper()
	gr, err := c.h.Store().Grant(context.Background(), g)
	if err != nil {
		c.t.Fatal(err)
	}
	data := bytes.Repeat([]byte{byte(seq)}, size)
	sum := sha256.Sum256(data)
	e := batch.FileEntry{Op: batch.OpPut, Path: "f" + strconv.FormatUint(seq, 10), Size: int64(len(data)), Mode: 0o640,
		ModTime: time.Now().UTC(), SHA256: hex.EncodeToString(sum[:]), ChunkSize: int64(len(data)), Chunks: 1,
		Length: int64(len(data)), ChunkSHA256: hex.EncodeToString(sum[:])}
	var buf bytes.Buffer
	w, err := batch.NewWriter(&buf, batch.Header{Kind: batch.KindFiles, Resource: gr.Resource, Grant: g, Provider: gr.Provider,
		Consumer: gr.Consumer, Sequence: seq, BodyLen: int64(len(data)), Files: []batch.FileEntry{e}}, c.seals[gr.Provider])
	if err != nil {
		c.t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		c.t.Fatal(err)
	}
	return buf.Bytes()
}

// put uploads body as bytes off.. of a batch of total bytes, as node.
func (c *callHub) put(node, grant string, seq uint64, body io.Reader, off, total int64) *httptest.ResponseRecorder {
	c.t.Helper()
	r := httptest.NewRequest(http.MethodPut, fmt.Sprintf("/v1/batches/%s/%d", grant, seq), body)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.certs[node]}}
	r.Header.Set(api.HeaderOffset, strconv.FormatInt(off, 10))
	r.Header.Set(api.HeaderTotal, strconv.FormatInt(total, 10))
	w := httptest.NewRecorder()
	c.srv.ServeHTTP(w, r)
	return w
}

// upload sends a whole sealed batch.
func (c *callHub) upload(grant string, seq uint64, size int) *httptest.ResponseRecorder {
	c.t.Helper()
	b := c.sealed(grant, seq, size)
	return c.put("gaj", grant, seq, bytes.NewReader(b), 0, int64(len(b)))
}

func TestUploadWindow(t *testing.T) {
	c := newCallHub(t, "mzj")
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	if w := c.upload(g, 1, 100); w.Code != http.StatusCreated {
		t.Fatalf("first batch: %d %s", w.Code, errorText(w))
	}
	window := c.h.cfg.UploadWindow
	for _, seq := range []uint64{1 + window + 1, 1000000, 1<<64 - 1} {
		w := c.put("gaj", g, seq, strings.NewReader("x"), 0, 1000)
		if w.Code != http.StatusConflict || !strings.Contains(errorText(w), "upload window") || !strings.Contains(errorText(w), "upload_window") {
			t.Errorf("upload to sequence %d: %d %s, want 409 naming the upload window", seq, w.Code, errorText(w))
		}
		if _, err := os.Stat(c.h.partialPath(g, seq)); err == nil {
			t.Errorf("a partial file was kept for sequence %d", seq)
		}
	}
	// The window's edge, and a gap below the highest, are taken.
	if w := c.upload(g, 1+window, 100); w.Code != http.StatusCreated {
		t.Errorf("upload at the window's edge: %d %s", w.Code, errorText(w))
	}
	if w := c.upload(g, 2, 100); w.Code != http.StatusCreated {
		t.Errorf("upload filling a gap: %d %s", w.Code, errorText(w))
	}
}

func TestProviderQuota(t *testing.T) {
	c := newCallHub(t, "mzj", "sbj")
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	other := c.grant("sbj", api.ModeBatch, nil, 0, 0)
	one := len(c.sealed(g, 1, 4000))
	c.h.cfg.ProviderQuota = config.Size(3*one + 50) // three batches, not four
	var stored int64
	for seq := uint64(1); seq <= 2; seq++ {
		b := c.sealed(g, seq, 4000)
		if w := c.put("gaj", g, seq, bytes.NewReader(b), 0, int64(len(b))); w.Code != http.StatusCreated {
			t.Fatalf("batch %d: %d %s", seq, w.Code, errorText(w))
		}
		stored += int64(len(b))
	}
	// An unfinished upload counts with the size it declared.
	part := c.sealed(other, 1, 4000)
	if w := c.put("gaj", other, 1, bytes.NewReader(part[:100]), 0, int64(len(part))); w.Code != http.StatusAccepted {
		t.Fatalf("partial upload: %d %s", w.Code, errorText(w))
	}
	held, _ := c.h.heldBytes(context.Background())
	if want := stored + 100; held["gaj"] != want {
		t.Errorf("held bytes %v, want gaj: %d", held, want)
	}
	w := c.upload(g, 3, 4000)
	if w.Code != http.StatusInsufficientStorage || !strings.Contains(errorText(w), "provider_quota") || !strings.Contains(errorText(w), "gaj") {
		t.Fatalf("upload past the quota: %d %s, want 507 naming the quota", w.Code, errorText(w))
	}
	if _, err := os.Stat(c.h.partialPath(g, 3)); err == nil {
		t.Error("the refused upload left a partial file")
	}
	// The unfinished upload resumes: it was counted already.
	if w := c.put("gaj", other, 1, bytes.NewReader(part[100:]), 100, int64(len(part))); w.Code != http.StatusCreated {
		t.Fatalf("resumed upload: %d %s", w.Code, errorText(w))
	}
	// Fetching a batch frees nothing yet; the consumer's receipt does.
	w = c.do("mzj", http.MethodGet, "/v1/batches/"+g+"/1", nil)
	if w.Code != http.StatusOK {
		t.Fatalf("download: %d", w.Code)
	}
	if w := c.upload(g, 3, 4000); w.Code != http.StatusInsufficientStorage {
		t.Errorf("upload after a delivery without a receipt: %d %s, want 507", w.Code, errorText(w))
	}
	info, err := batch.Verify(bytes.NewReader(w.Body.Bytes()), int64(w.Body.Len()), func(string) (seal.PublicKey, error) { return c.seals["gaj"].Public(), nil })
	if err != nil {
		t.Fatal(err)
	}
	rc, err := receipt.Sign(receipt.For(info, time.Now()), c.seals["mzj"])
	if err != nil {
		t.Fatal(err)
	}
	if w := c.do("mzj", http.MethodPost, "/v1/receipts", rc); w.Code != http.StatusNoContent {
		t.Fatalf("receipt: %d %s", w.Code, errorText(w))
	}
	if w := c.upload(g, 3, 4000); w.Code != http.StatusCreated {
		t.Errorf("upload after a receipt: %d %s", w.Code, errorText(w))
	}
}

func TestPartialUploadsExpire(t *testing.T) {
	c := newCallHub(t, "mzj")
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	if d := DefaultConfig().PartialMaxAge; d > 24*time.Hour {
		t.Errorf("partial uploads kept %s by default; want hours", d)
	}
	b := c.sealed(g, 1, 4000)
	if w := c.put("gaj", g, 1, bytes.NewReader(b[:10]), 0, int64(len(b))); w.Code != http.StatusAccepted {
		t.Fatalf("partial upload: %d", w.Code)
	}
	path := c.h.partialPath(g, 1)
	age := func(d time.Duration) {
		at := time.Now().Add(-d)
		os.Chtimes(path, at, at)
		c.h.Purge(context.Background())
	}
	age(c.h.cfg.PartialMaxAge - time.Minute)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("a partial upload younger than partial_max_age was removed: %v", err)
	}
	age(c.h.cfg.PartialMaxAge + time.Minute)
	if _, err := os.Stat(path); err == nil {
		t.Errorf("a partial upload older than partial_max_age (%s) was kept", c.h.cfg.PartialMaxAge)
	}
	if held, _ := c.h.heldBytes(context.Background()); held["gaj"] != 0 {
		t.Errorf("the removed upload still counts against the quota: %v", held)
	}
}

// revokingReader calls revoke once its last byte has been read: after
// the hub checked the grant, before it stores the batch.
type revokingReader struct {
	r      *bytes.Reader
	revoke func()
}

func (r *revokingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.r.Len() == 0 && r.revoke != nil {
		r.revoke()
		r.revoke = nil
	}
	return n, err
}

func TestNoBatchStoredAfterRevoke(t *testing.T) {
	c := newCallHub(t, "mzj")
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	b := c.sealed(g, 1, 4000)
	body := &revokingReader{r: bytes.NewReader(b), revoke: func() {
		if err := c.h.Store().RevokeGrant(context.Background(), g, false); err != nil {
			t.Error(err)
		}
	}}
	w := c.put("gaj", g, 1, body, 0, int64(len(b)))
	if body.revoke != nil {
		t.Fatal("the upload never read its last byte")
	}
	if w.Code != http.StatusGone || !strings.Contains(errorText(w), "no longer active") {
		t.Errorf("batch whose grant was revoked during its upload: %d %s, want 410", w.Code, errorText(w))
	}
	if _, err := c.h.Store().Batch(context.Background(), g, 1); err == nil {
		t.Error("a batch was stored after its grant was revoked")
	}
	if _, err := os.Stat(c.h.payloadPath(g, 1)); err == nil {
		t.Error("the refused batch's payload file stayed")
	}
	if _, err := os.Stat(c.h.partialPath(g, 1)); err == nil {
		t.Error("the refused batch's partial file stayed")
	}
}

func TestNodeRevokeEndsGrants(t *testing.T) {
	c := newCallHub(t, "mzj", "sbj")
	ctx := context.Background()
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	kept := c.grant("sbj", api.ModeBatch, nil, 0, 0)
	for seq := uint64(1); seq <= 3; seq++ {
		if w := c.upload(g, seq, 1000); w.Code != http.StatusCreated {
			t.Fatalf("batch %d: %d %s", seq, w.Code, errorText(w))
		}
	}
	var out bytes.Buffer
	if err := Run(ctx, []string{"node", "revoke", "mzj", "--destroy", "--config", c.cfg}, &out, &out); err != nil {
		t.Fatalf("node revoke: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), g) {
		t.Errorf("node revoke does not name the grant it ended:\n%s", out.String())
	}
	gr, _ := c.h.Store().Grant(ctx, g)
	if gr.Status != store.GrantRevoked || !gr.Destroy {
		t.Errorf("grant of the revoked consumer: %s destroy=%t, want revoked with destruction", gr.Status, gr.Destroy)
	}
	if gr, _ := c.h.Store().Grant(ctx, kept); gr.Status != store.GrantActive {
		t.Errorf("another consumer's grant: %s", gr.Status)
	}
	if m, _ := c.h.Store().Summary(ctx); m.AwaitingDelivery != 0 {
		t.Errorf("%d batches still shown awaiting delivery after the node revoke", m.AwaitingDelivery)
	}
	c.h.changed() // as watchGrants does within 250 ms of the CLI's change
	if w := c.upload(g, 4, 1000); w.Code != http.StatusGone {
		t.Errorf("provider's upload for the revoked node: %d %s, want 410", w.Code, errorText(w))
	}
	// Revoking the provider ends the rest.
	if err := Run(ctx, []string{"node", "revoke", "gaj", "--config", c.cfg}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if gr, _ := c.h.Store().Grant(ctx, kept); gr.Status != store.GrantRevoked || gr.Destroy {
		t.Errorf("grant of the revoked provider: %s destroy=%t, want revoked without destruction", gr.Status, gr.Destroy)
	}
}

func TestCopyReportBoundToGrant(t *testing.T) {
	c := newCallHub(t, "mzj", "sbj")
	g1 := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	g2 := c.grant("sbj", api.ModeBatch, nil, 0, 0)
	now := time.Now()
	rep := func(g, consumer string, rows int64, at time.Time) *httptest.ResponseRecorder {
		return c.do("gaj", http.MethodPost, "/v1/copies", api.Copy{ID: "copy-1", Grant: g, Resource: "gaj.hukou", Consumer: consumer,
			State: api.CopyRunning, Rows: rows, Updated: at})
	}
	if w := rep(g1, "mzj", 5, now); w.Code != http.StatusNoContent {
		t.Fatalf("report: %d %s", w.Code, errorText(w))
	}
	if w := rep(g2, "sbj", 0, now.Add(time.Second)); w.Code != http.StatusConflict {
		t.Errorf("report under another grant with the same copy ID: %d %s, want 409", w.Code, errorText(w))
	}
	cs, _ := c.h.Store().Copies(context.Background())
	if len(cs) != 1 || cs[0].Grant != g1 || cs[0].Rows != 5 {
		t.Errorf("copies: %+v", cs)
	}
}

func TestBatchGrantIDChecked(t *testing.T) {
	c := newCallHub(t, "mzj")
	for _, id := range []string{"..%2Fpartial%2Fx", ".x", "a%00b"} {
		w := c.put("gaj", id, 1, strings.NewReader("x"), 0, 1)
		if w.Code != http.StatusBadRequest || !strings.Contains(errorText(w), "grant ID") {
			t.Errorf("grant %q: %d %s, want 400 naming the grant ID", id, w.Code, errorText(w))
		}
	}
	entries, _ := os.ReadDir(filepath.Join(c.h.cfg.StateDir, "payload"))
	for _, e := range entries {
		if e.Name() != "partial" {
			t.Errorf("payload folder holds %s", e.Name())
		}
	}
}

// TestEnrolEndsOlderTokens: POST /v1/enroll with one token voids every
// other unused token of the node, so an older one cannot enrol someone
// else over the node that runs.
func TestEnrolEndsOlderTokens(t *testing.T) {
	c := newCallHub(t)
	ctx := context.Background()
	var toks []pki.Token
	for i := range 2 {
		tok, err := newToken(c.h.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			err = c.h.Store().AddNode(ctx, "rsj", "rsj", tok.Hash(), time.Now().Add(time.Hour))
		} else {
			err = c.h.Store().NewToken(ctx, "rsj", tok.Hash(), time.Now().Add(time.Hour))
		}
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	enrol := func(tok pki.Token) *httptest.ResponseRecorder {
		key, _ := pki.NewKey()
		csr, _ := pki.NewCSR(key)
		sk, _ := seal.Generate()
		pub, _ := sk.Public().MarshalText()
		j, _ := json.Marshal(api.EnrollRequest{Token: tok.String(), CSR: string(csr), SealPub: string(pub)})
		w := httptest.NewRecorder()
		c.srv.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/enroll", bytes.NewReader(j)))
		return w
	}
	if w := enrol(toks[1]); w.Code != http.StatusOK {
		t.Fatalf("enrolment with the newer token: %d %s", w.Code, errorText(w))
	}
	live, _ := c.h.Store().Node(ctx, "rsj")
	if w := enrol(toks[0]); w.Code != http.StatusForbidden {
		t.Errorf("enrolment with the older token over the live node: %d %s, want 403", w.Code, errorText(w))
	}
	if n, _ := c.h.Store().Node(ctx, "rsj"); n.CertSerial != live.CertSerial {
		t.Error("the live node's certificate was replaced")
	}
}

// TestProviderQuotaMetric: what each provider holds is on /metrics.
func TestProviderQuotaMetric(t *testing.T) {
	c := newCallHub(t, "mzj")
	g := c.grant("mzj", api.ModeBatch, nil, 0, 0)
	b := c.sealed(g, 1, 4000)
	if w := c.put("gaj", g, 1, bytes.NewReader(b), 0, int64(len(b))); w.Code != http.StatusCreated {
		t.Fatalf("upload: %d %s", w.Code, errorText(w))
	}
	mfs, err := c.h.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var held, quota float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "qz_provider_held_bytes":
				if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == "gaj" {
					held = m.GetGauge().GetValue()
				}
			case "qz_provider_quota_bytes":
				quota = m.GetGauge().GetValue()
			}
		}
	}
	if held != float64(len(b)) || quota != float64(c.h.cfg.ProviderQuota) {
		t.Errorf("qz_provider_held_bytes{provider=gaj} %g, qz_provider_quota_bytes %g; want %d and %d", held, quota, len(b), c.h.cfg.ProviderQuota)
	}
}
