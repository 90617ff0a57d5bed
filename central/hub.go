package central

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"github.com/qianzhi/qianzhi/pkg/metrics"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/sdnotify"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// Hub is a running hub.
type Hub struct {
	cfg   Config
	store store.Store
	ca    *pki.CA
	tls   *tls.Config
	log   *slog.Logger
	now   func() time.Time

	metrics      *hubMetrics
	inflight     sync.WaitGroup     // calls being served (see Close)
	restoredFrom time.Time          // when the backup this hub was restored from was taken
	cal          *calendar.Calendar // see calendar()
	calAt        time.Time          // modification time of HolidaysDir when cal was loaded

	mu        sync.Mutex
	waiters   map[string]chan struct{} // consumer node → wake-up
	grantsGen chan struct{}            // closed and replaced when grants change

	calls *callState // query and verify calls (calls.go)

	nodes    map[string]store.Node // nodes as last read, for the check of every request (see cachedNode)
	nodesGen <-chan struct{}       // the grantsGen they were read under
	nodesSeq uint64                // counts forgetNode calls (see cachedNode)

	lastRefusal time.Time          // last audited enrolment refusal
	refusals    int                // refusals since, not yet audited
	uploads     map[string]*upload // grant/seq → the upload writing it
	partials    partialBytes       // unfinished uploads, by provider (quota.go)
	nodeAudits  *auditLimiter      // audit records nodes cause, bounded (nodeaudit.go)
}

// calendar returns the working-day calendar, loading it again when the
// holidays folder changed: an operator adds next year's file without a
// restart. A file that does not load keeps the calendar as it was (and the
// error is logged; qz-central config check names it).
func (h *Hub) calendar() *calendar.Calendar {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := newestChange(h.cfg.HolidaysDir)
	if !changed.After(h.calAt) {
		return h.cal
	}
	h.calAt = changed
	cal, err := h.cfg.Calendar()
	if err != nil {
		h.log.Error("holiday calendar not reloaded", "err", err)
		return h.cal
	}
	h.cal = cal
	h.log.Info("holiday calendar reloaded", "years", cal.Years())
	return h.cal
}

// newestChange is the latest modification time of a folder and its files
// (zero if it does not exist).
func newestChange(dir string) time.Time {
	var t time.Time
	if fi, err := os.Stat(dir); err == nil {
		t = fi.ModTime()
	}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if fi, err := e.Info(); err == nil && fi.ModTime().After(t) {
			t = fi.ModTime()
		}
	}
	return t
}

// ErrNotInitialised means qz-central init has not run for this state dir.
var ErrNotInitialised = errors.New("hub is not initialised")

// Open loads the hub's CA, keys and database.
func Open(cfg Config, log *slog.Logger) (*Hub, error) {
	if _, err := os.Stat(cfg.caCert()); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no CA in %s; run 'qz-central init' first", ErrNotInitialised, cfg.StateDir)
	}
	ca, err := pki.LoadCA(cfg.caCert(), cfg.caKey())
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(cfg.serverCert(), cfg.serverKey())
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	cert.Certificate = append(cert.Certificate, ca.Cert.Raw) // send the CA so a new agent can pin it
	cal, err := cfg.Calendar()
	if err != nil {
		return nil, err
	}
	st, err := store.OpenSQLite(cfg.dbPath())
	if err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.payloadDir(), cfg.partialDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			st.Close()
			return nil, fmt.Errorf("prepare payload folder: %w", err)
		}
	}
	h := &Hub{cfg: cfg, store: st, ca: ca, log: log, now: time.Now, cal: cal, calAt: time.Now(),
		waiters: map[string]chan struct{}{}, grantsGen: make(chan struct{}), uploads: map[string]*upload{},
		partials: partialBytes{files: map[string]partialFile{}}, nodeAudits: newAuditLimiter()}
	h.metrics = newHubMetrics(h)
	h.calls = newCallState(st, log)
	if h.restoredFrom, err = st.RestoredFrom(context.Background()); err != nil {
		st.Close()
		return nil, err
	}
	h.loadPartials(context.Background())
	if ns, err := st.Nodes(context.Background()); err == nil {
		for _, n := range ns {
			if !n.LastSeen.IsZero() {
				h.metrics.seen[n.ID] = n.LastSeen // a node silent since before this start still shows
			}
		}
	}
	if skew := os.Getenv("QZ_TEST_CLOCK_SKEW"); skew != "" {
		// Tests only: a hub whose clock is wrong, which a test cannot
		// otherwise arrange without changing the machine's clock.
		d, err := time.ParseDuration(skew)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("QZ_TEST_CLOCK_SKEW: %w", err)
		}
		h.now = func() time.Time { return time.Now().Add(d) }
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	h.tls = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientCAs:        pool,
		ClientAuth:       tls.VerifyClientCertIfGiven, // enrolment comes without one
		VerifyConnection: h.verifyConnection,
	}
	return h, nil
}

// Store exposes the hub's store to the admin CLI and tests.
func (h *Hub) Store() store.Store { return h.store }

// Close writes the call records still waiting and closes the database.
func (h *Hub) Close() error {
	// Calls still running when the server stopped end as their requests
	// are cancelled; each is recorded before the writer closes. The wait
	// is bounded so a stop never hangs on them.
	done := make(chan struct{})
	go func() { h.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.log.Error("calls still running 10s after the hub stopped serving; their records are lost")
	}
	h.calls.writer.close()
	return h.store.Close()
}

// verifyConnection refuses, at the handshake, certificates of revoked or
// replaced nodes. Chain validation against the CA has already happened.
func (h *Hub) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil // enrolment or ping only; handlers require a node
	}
	c := cs.PeerCertificates[0]
	if pki.IsOperator(c) {
		if _, err := h.store.OperatorFor(context.Background(), c.Subject.CommonName, c.SerialNumber.Text(16)); err != nil {
			h.metrics.errors.WithLabelValues(errHandshake).Inc()
			h.log.Warn("handshake refused: unknown or revoked operator", "operator", c.Subject.CommonName)
			return fmt.Errorf("operator %q is unknown or revoked", c.Subject.CommonName)
		}
		return nil
	}
	n, err := h.store.Node(context.Background(), c.Subject.CommonName)
	if err != nil {
		h.metrics.errors.WithLabelValues(errHandshake).Inc()
		h.log.Warn("handshake refused: unknown node", "node", c.Subject.CommonName)
		return fmt.Errorf("unknown node %q", c.Subject.CommonName)
	}
	if n.Status != store.NodeActive {
		h.metrics.errors.WithLabelValues(errHandshake).Inc()
		h.log.Warn("handshake refused: node not active", "node", n.ID, "status", n.Status)
		return fmt.Errorf("node %s is %s", n.ID, n.Status)
	}
	if !n.Accepts(c.SerialNumber.Text(16)) && !h.adopt(n, c) {
		h.metrics.errors.WithLabelValues(errHandshake).Inc()
		h.log.Warn("handshake refused: superseded certificate", "node", n.ID)
		return fmt.Errorf("certificate of node %s was superseded", n.ID)
	}
	return nil
}

// adopt accepts, after a restore, a node certificate the database does not
// know because the CA issued it (a renewal) after the backup was taken.
// Certificates from before the backup are still refused: a superseded one
// stays superseded.
func (h *Hub) adopt(n store.Node, c *x509.Certificate) bool {
	if !adoptable(h.restoredFrom, n, c) {
		return false
	}
	serial := c.SerialNumber.Text(16)
	detail := "issued " + pki.Issued(c).UTC().Format(time.RFC3339) + ", after the backup restored (taken " + h.restoredFrom.UTC().Format(time.RFC3339) + ")"
	defer h.forgetNode(n.ID)
	if err := h.store.Adopt(context.Background(), n.ID, serial, c.NotAfter, detail); err != nil {
		h.log.Warn("cannot adopt a certificate issued after the backup", "node", n.ID, "err", err)
		return false
	}
	h.log.Info("adopted a certificate issued after the backup this hub was restored from", "node", n.ID, "serial", serial)
	return true
}

// adoptable reports whether a certificate the node table does not know was
// issued after the backup restored (taken at restoredFrom) and outlives
// the one the table knows.
func adoptable(restoredFrom time.Time, n store.Node, c *x509.Certificate) bool {
	return !restoredFrom.IsZero() && n.Status == store.NodeActive && pki.Issued(c).After(restoredFrom) && c.NotAfter.After(n.CertExpiry)
}

// Serve runs the hub until ctx ends. ready, if not nil, receives the bound
// addresses once listening.
func (h *Hub) Serve(ctx context.Context, ready func(quicAddr, tcpAddr string)) error {
	key, err := h.resetKey()
	if err != nil {
		return err
	}
	if err := h.startAnchor(ctx); err != nil {
		return err
	}
	srv := &transport.Server{Handler: h.Handler(), TLS: h.tls, Logger: h.log, ResetKey: key, MaxAnonymous: h.cfg.MaxAnonymousConns}
	q, t := "", ""
	if h.cfg.QUIC {
		q = h.cfg.Listen
	}
	if h.cfg.TCP {
		t = h.cfg.Listen
	}
	if err := srv.Listen(q, t); err != nil {
		return err
	}
	h.log.Info("hub listening", "quic", srv.QUICAddr(), "tcp", srv.TCPAddr())
	if ready != nil {
		ready(srv.QUICAddr(), srv.TCPAddr())
	}
	go h.janitor(ctx)
	go h.watchGrants(ctx)
	if !metrics.Off(h.cfg.MetricsListen) {
		ms, err := metrics.Listen(h.cfg.MetricsListen, h.metrics.reg, h.health, h.log)
		if err != nil {
			h.log.Error("metrics endpoint not started", "err", err)
		} else {
			defer ms.Close()
			h.log.Info("metrics endpoint listening", "addr", ms.Addr())
		}
	}
	go sdnotify.RunWatchdog(ctx, func(ctx context.Context) error { _, err := h.store.Nodes(ctx); return err })
	sdnotify.Notify(sdnotify.Ready)
	go func() {
		if err := h.serveAdmin(ctx); err != nil {
			h.log.Error("admin socket stopped; qz-central commands on this host open the database directly", "err", err)
		}
	}()
	return srv.Serve(ctx)
}

// resetKey loads the QUIC stateless-reset key, creating it on first run.
func (h *Hub) resetKey() (*quic.StatelessResetKey, error) {
	path := filepath.Join(h.cfg.StateDir, "quic-reset.key")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		b = make([]byte, 32)
		rand.Read(b)
		err = fsutil.WriteFileAtomic(path, b, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("QUIC reset key: %w", err)
	}
	if len(b) != 32 {
		return nil, fmt.Errorf("QUIC reset key %s is damaged: delete it and restart", path)
	}
	var k quic.StatelessResetKey
	copy(k[:], b)
	return &k, nil
}

// janitor deletes payloads whose receipts are in and whose retention passed.
func (h *Hub) janitor(ctx context.Context) {
	t := time.NewTicker(min(max(h.cfg.Retention/4, time.Second), time.Minute))
	defer t.Stop()
	for {
		h.Purge(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Purge deletes expired payloads now.
func (h *Hub) Purge(ctx context.Context) {
	bs, err := h.store.Purgeable(ctx, h.now().Add(-h.cfg.Retention))
	if err != nil {
		h.log.Error("list purgeable batches", "err", err)
		return
	}
	for _, b := range bs {
		// Record first, then delete: a crash between leaves a stray file
		// (harmless), never a record pointing at nothing.
		if err := h.store.MarkPurged(ctx, b.Grant, b.Sequence); err != nil {
			h.log.Error("mark batch purged", "err", err)
			return
		}
		os.Remove(h.payloadPath(b.Grant, b.Sequence))
	}
	h.flushRefusals(ctx)
	h.flushNodeAudits(ctx)
	// Uploads abandoned half-way (the grant ended, the provider's spool
	// was lost, or a provider parks bytes here) would otherwise hold disk
	// space and their provider's quota. One being written is left alone.
	ents, _ := os.ReadDir(h.cfg.partialDir())
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || h.now().Sub(fi.ModTime()) <= h.cfg.PartialMaxAge || h.uploading(e.Name()) {
			continue
		}
		os.Remove(filepath.Join(h.cfg.partialDir(), e.Name()))
		h.partials.forget(e.Name())
		h.log.Info("removed an abandoned partial upload", "file", e.Name(), "age_limit", h.cfg.PartialMaxAge)
	}
}

// uploading reports whether a request is writing the partial file name.
func (h *Hub) uploading(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, u := range h.uploads {
		if u.part == name {
			return true
		}
	}
	return false
}

func (h *Hub) payloadPath(grant string, seq uint64) string {
	return filepath.Join(h.cfg.payloadDir(), grant, strconv.FormatUint(seq, 10)+".qzb")
}

func (h *Hub) partialPath(grant string, seq uint64) string {
	return filepath.Join(h.cfg.partialDir(), grant+"-"+strconv.FormatUint(seq, 10)+".part")
}

// Handler is the hub's HTTP API, the same over HTTP/3 and HTTP/2.
func (h *Hub) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		// The hub's clock, for qz-agent doctor's skew check (finer than Date).
		w.Header().Set(api.HeaderTime, h.now().UTC().Format(time.RFC3339Nano))
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("POST /v1/enroll", h.enroll)
	mux.Handle("POST /v1/renew", h.node(h.renew))
	mux.HandleFunc("POST /admin/v1/run", h.remoteAdmin)
	mux.Handle("POST /v1/resources", h.node(h.registerResources))
	mux.Handle("GET /v1/catalog", h.node(h.catalog))
	mux.Handle("POST /v1/applications", h.node(h.submitApplication))
	mux.Handle("GET /v1/applications", h.node(h.listApplications))
	mux.Handle("POST /v1/applications/{id}/decision", h.node(h.decideApplication))
	mux.Handle("POST /v1/destructions", h.node(h.destruction))
	mux.Handle("GET /v1/destructions", h.node(h.listDestructions))
	mux.Handle("POST /v1/feedback", h.node(h.submitFeedback))
	mux.Handle("GET /v1/feedback", h.node(h.listFeedback))
	mux.Handle("POST /v1/feedback/{id}/answer", h.node(h.answerFeedback))
	mux.Handle("GET /v1/grants", h.node(h.listGrants))
	mux.Handle("GET /v1/nodes/{id}/seal", h.node(h.sealKey))
	mux.Handle("HEAD /v1/batches/{grant}/{seq}", h.node(h.uploadStatus))
	mux.Handle("PUT /v1/batches/{grant}/{seq}", h.node(h.upload))
	mux.Handle("GET /v1/batches/{grant}/{seq}", h.node(h.download))
	mux.Handle("GET /v1/deliveries", h.node(h.deliveries))
	mux.Handle("POST /v1/receipts", h.node(h.receipt))
	mux.Handle("GET /v1/receipts", h.node(h.listReceipts))
	mux.Handle("POST /v1/rejections", h.node(h.rejection))
	mux.Handle("POST /v1/refusals", h.node(h.grantRefusal))
	mux.Handle("POST /v1/resends", h.node(h.resends))
	mux.Handle("POST /v1/copies", h.node(h.copyProgress))
	mux.Handle("POST /v1/calls", h.node(h.call))
	mux.Handle("GET /v1/calls/next", h.node(h.nextCalls))
	mux.Handle("POST /v1/calls/{id}/answer", h.node(h.answerCall))
	mux.Handle("POST /v1/calls/answers", h.node(h.answerCalls))
	mux.Handle("GET /v1/calls", h.node(h.listCalls))
	mux.Handle("GET /v1/audit/checkpoints", h.node(h.auditCheckpoints))
	return mux
}

type ctxKey struct{}

// node admits only requests from an enrolled node's certificate.
func (h *Hub) node(fn http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			httpError(w, http.StatusUnauthorized, "a node certificate is required; enrol first with 'qz-agent enroll'")
			return
		}
		// The handshake checked the node, but a connection lives long:
		// check again on every request so a revocation cuts it off now.
		c := r.TLS.PeerCertificates[0]
		n, err := h.cachedNode(r.Context(), c.Subject.CommonName)
		if pki.IsOperator(c) {
			httpError(w, http.StatusForbidden, "an operator certificate is for qz-central --remote only, not for node routes")
			return
		}
		if err != nil || n.Status != store.NodeActive || !n.Accepts(c.SerialNumber.Text(16)) {
			h.metrics.errors.WithLabelValues(errRefused).Inc()
			httpError(w, http.StatusForbidden, "this node's certificate is revoked or superseded")
			return
		}
		h.seen(n.ID)
		fn(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, n.ID)))
	})
}

// cachedNode returns a node as the store last gave it. Every request checks
// its node, and reading it from the database each time cost more than
// the rest of a call's checks. The cache is dropped whenever a grant or a
// node's status changes (revocations by the admin CLI included, through
// watchGrants within 250 ms), and a node's entry when this hub changes
// its certificate (enrolment, renewal, adoption).
func (h *Hub) cachedNode(ctx context.Context, id string) (store.Node, error) {
	gen := h.grantsChanged()
	h.mu.Lock()
	if h.nodesGen != gen {
		h.nodes, h.nodesGen = map[string]store.Node{}, gen
	}
	n, ok := h.nodes[id]
	seq := h.nodesSeq
	h.mu.Unlock()
	if ok {
		return n, nil
	}
	n, err := h.store.Node(ctx, id)
	if err == nil {
		h.mu.Lock()
		// Kept only if nothing changed a node meanwhile: a renewal that
		// committed after this read must not be hidden by it.
		if h.nodesGen == gen && h.nodesSeq == seq {
			h.nodes[id] = n
		}
		h.mu.Unlock()
	}
	return n, err
}

// forgetNode drops a node from the cache, after this hub changed it.
func (h *Hub) forgetNode(id string) {
	h.mu.Lock()
	delete(h.nodes, id)
	h.nodesSeq++
	h.mu.Unlock()
}

func nodeID(r *http.Request) string { return r.Context().Value(ctxKey{}).(string) }

func httpError(w http.ResponseWriter, code int, msg string) { api.WriteError(w, code, msg) }

func writeJSON(w http.ResponseWriter, v any) { api.WriteJSON(w, v) }

func (h *Hub) internal(w http.ResponseWriter, op string, err error) {
	h.metrics.errors.WithLabelValues(errInternal).Inc()
	h.log.Error("request failed", "op", op, "err", err)
	httpError(w, http.StatusInternalServerError, op+": internal error; see the hub log")
}

func (h *Hub) enroll(w http.ResponseWriter, r *http.Request) {
	var req api.EnrollRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, "malformed enrolment request")
		return
	}
	tok, err := pki.ParseToken(req.Token)
	if err != nil {
		httpError(w, http.StatusForbidden, err.Error())
		return
	}
	csr, err := pki.ParseCSR([]byte(req.CSR))
	if err != nil {
		httpError(w, http.StatusBadRequest, "certificate request: "+err.Error())
		return
	}
	if _, err := seal.ParsePublic(req.SealPub); err != nil {
		httpError(w, http.StatusBadRequest, "seal key: "+err.Error())
		return
	}
	ctx := r.Context()
	node, err := h.store.TokenNode(ctx, tok.Hash())
	if err != nil {
		h.refuseToken(ctx, w, err)
		return
	}
	cert, err := h.ca.IssueNode(csr, node, h.cfg.CertValidity)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	defer h.forgetNode(node)
	if _, err := h.store.Enroll(ctx, tok.Hash(), cert.SerialNumber.Text(16), cert.NotAfter, req.SealPub); err != nil {
		h.refuseToken(ctx, w, err)
		return
	}
	h.log.Info("node enrolled", "node", node, "serial", cert.SerialNumber.Text(16))
	writeJSON(w, api.EnrollResponse{NodeID: node, Cert: string(pki.CertPEM(cert)), CA: string(pki.CertPEM(h.ca.Cert))})
}

// renew issues a node a new certificate before its current one expires.
// The request comes over the node's own mutual-TLS connection, which
// proves who it is; the key may be the same (qz-agent keeps its key).
func (h *Hub) renew(w http.ResponseWriter, r *http.Request) {
	var req api.RenewRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, "malformed renewal request")
		return
	}
	csr, err := pki.ParseCSR([]byte(req.CSR))
	if err != nil {
		httpError(w, http.StatusBadRequest, "certificate request: "+err.Error())
		return
	}
	node := nodeID(r)
	// The key stays: a stolen certificate and key must not be moved onto
	// a key of the thief's own (re-enrolment with a token is for that).
	old := r.TLS.PeerCertificates[0]
	if k, ok := old.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(csr.PublicKey) {
		httpError(w, http.StatusForbidden, "renewal must keep the node's key; to change it, enrol again with a new token")
		return
	}
	cert, err := h.ca.IssueNode(csr, node, h.cfg.CertValidity)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	presented := r.TLS.PeerCertificates[0].SerialNumber.Text(16)
	defer h.forgetNode(node)
	if err := h.store.Renew(r.Context(), node, presented, cert.SerialNumber.Text(16), cert.NotAfter); err != nil {
		if errors.Is(err, store.ErrConflict) {
			httpError(w, http.StatusForbidden, err.Error())
			return
		}
		h.internal(w, "renew", err)
		return
	}
	h.log.Info("node certificate renewed", "node", node, "serial", cert.SerialNumber.Text(16), "expires", cert.NotAfter)
	writeJSON(w, api.RenewResponse{Cert: string(pki.CertPEM(cert))})
}

func (h *Hub) refuseToken(ctx context.Context, w http.ResponseWriter, err error) {
	if errors.Is(err, store.ErrTokenInvalid) || errors.Is(err, store.ErrConflict) {
		h.auditRefusal(ctx, err.Error())
		httpError(w, http.StatusForbidden, err.Error()+"; ask the hub operator for a new token ('qz-central node token NODE_ID')")
		return
	}
	h.internal(w, "enroll", err)
}

// auditRefusal records refused enrolments, at most one record every 10 s
// with a count of the others: enrolment needs no certificate, so anyone who
// reaches the port could otherwise grow the audit log without bound.
func (h *Hub) auditRefusal(ctx context.Context, reason string) {
	h.mu.Lock()
	now := h.now()
	if now.Sub(h.lastRefusal) < 10*time.Second {
		h.refusals++
		h.mu.Unlock()
		h.log.Warn("enrolment refused", "reason", reason)
		return
	}
	n := h.refusals
	h.lastRefusal, h.refusals = now, 0
	h.mu.Unlock()
	if n > 0 {
		reason = fmt.Sprintf("%s (and %d more refusals since the last record)", reason, n)
	}
	h.store.Audit(ctx, "hub", "enroll.refuse", "", reason)
}

// flushRefusals records refusals still uncounted once their window ended.
func (h *Hub) flushRefusals(ctx context.Context) {
	h.mu.Lock()
	n := h.refusals
	if n == 0 || h.now().Sub(h.lastRefusal) < 10*time.Second {
		h.mu.Unlock()
		return
	}
	h.refusals = 0
	h.mu.Unlock()
	h.store.Audit(ctx, "hub", "enroll.refuse", "", fmt.Sprintf("%d more refusals after the last record", n))
}

func (h *Hub) registerResources(w http.ResponseWriter, r *http.Request) {
	var decls []api.ResourceDecl
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&decls); err != nil {
		httpError(w, http.StatusBadRequest, "malformed resource list")
		return
	}
	for _, d := range decls {
		if err := api.ValidID("resource", d.ID); err != nil || d.Kind == "" {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("resource %q: a valid id and a kind are required (%v)", d.ID, err))
			return
		}
		err := h.store.RegisterResource(r.Context(), store.Resource{ID: d.ID, Provider: nodeID(r), Kind: d.Kind})
		if errors.Is(err, store.ErrConflict) {
			httpError(w, http.StatusConflict, err.Error()+"; choose another resource id")
			return
		}
		if err != nil {
			h.internal(w, "register resource", err)
			return
		}
		if d.Catalog == nil {
			continue
		}
		e := *d.Catalog
		e.Resource = d.ID
		if err := e.Validate(); err != nil {
			h.auditNode(r.Context(), nodeID(r), "catalog.refuse", d.ID, err.Error())
			httpError(w, http.StatusBadRequest, fmt.Sprintf("resource %s: %v", d.ID, err))
			return
		}
		deadline := h.calendar().Deadline(h.now(), h.cfg.Deadlines.CatalogReview)
		version, changed, err := h.store.SubmitCatalog(r.Context(), nodeID(r), e, deadline)
		if err != nil {
			h.internal(w, "submit catalog entry", err)
			return
		}
		if changed {
			h.log.Info("catalog entry waits for review", "resource", d.ID, "version", version, "deadline", deadline)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// catalog answers with the approved catalog entries, filtered by the words
// of ?q= (all must occur).
func (h *Hub) catalog(w http.ResponseWriter, r *http.Request) {
	vs, err := h.store.CatalogApproved(r.Context())
	if err != nil {
		h.internal(w, "read catalog", err)
		return
	}
	words := strings.Fields(r.URL.Query().Get("q"))
	out := []api.CatalogVersion{}
	for _, v := range vs {
		if v.Entry.Matches(words) {
			out = append(out, v)
		}
	}
	writeJSON(w, out)
}

// listGrants answers with the calling node's grants. With ?wait=D&version=V
// it is a long poll: it answers once the list differs from version V (an
// opaque value from the Qz-Version header of an earlier answer), or after D.
func (h *Hub) listGrants(w http.ResponseWriter, r *http.Request) {
	have := r.URL.Query().Get("version")
	longPoll(r, h.grantsChanged, func(last bool) bool {
		out, version, err := h.grantsOf(r.Context(), nodeID(r))
		if err != nil {
			h.internal(w, "list grants", err)
			return true
		}
		if version == have && !last {
			return false
		}
		w.Header().Set(api.HeaderVersion, version)
		writeJSON(w, out)
		return true
	})
}

// longPoll calls answer until it answers (returns true), waking when the
// channel from wake closes; answer's last is true once the request's
// ?wait= has passed, when it must answer. wake is called before each
// answer so no change between the two is missed.
func longPoll(r *http.Request, wake func() <-chan struct{}, answer func(last bool) bool) {
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	wait = min(max(wait, 0), 60*time.Second)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	last := wait == 0
	for {
		c := wake()
		if answer(last) {
			return
		}
		select {
		case <-c:
		case <-deadline.C:
			last = true
		case <-r.Context().Done():
			return
		}
	}
}

func (h *Hub) grantsOf(ctx context.Context, node string) ([]api.GrantInfo, string, error) {
	gs, err := h.store.GrantsFor(ctx, node)
	if err != nil {
		return nil, "", err
	}
	out := []api.GrantInfo{}
	now := h.now()
	for _, g := range gs {
		gi := api.GrantInfo{ID: g.ID, Resource: g.Resource, Provider: g.Provider, Consumer: g.Consumer,
			Mode: g.Mode, Fields: g.Fields, Masks: g.Masks, Active: g.Active(now), Expires: g.Expires, Destroy: g.Destroy}
		if g.Mode == api.ModeQuery || g.Mode == api.ModeVerify {
			gi.Rate, gi.Quota = h.effectiveLimits(g)
		}
		out = append(out, gi)
	}
	b, _ := json.Marshal(out)
	sum := sha256.Sum256(b)
	return out, hex.EncodeToString(sum[:8]), nil
}

// grantsChanged returns a channel closed at the next change of any grant.
func (h *Hub) grantsChanged() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.grantsGen
}

// watchGrants notices grant changes, including those the admin CLI makes
// directly in the database and grants reaching the end of their term, and
// wakes the long polls waiting for them.
func (h *Hub) watchGrants(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	last, _ := h.store.GrantsVersion(ctx)
	checked := h.now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// A grant whose term just ended changes what agents must do
		// (stop, or destroy) as much as a new version does.
		now := h.now()
		expired, _ := h.store.GrantsExpiring(ctx, checked, now)
		checked = now
		v, err := h.store.GrantsVersion(ctx)
		if err != nil || v == last && expired == 0 {
			continue
		}
		last = v
		h.changed()
	}
}

// changed wakes everything waiting for grants or nodes to change, and drops
// what is kept of them in memory.
func (h *Hub) changed() {
	h.mu.Lock()
	close(h.grantsGen)
	h.grantsGen = make(chan struct{})
	h.mu.Unlock()
}

// sealKey serves a node's seal public key: the one with ?key=ID (current or
// from before a re-enrolment), or the current one.
func (h *Hub) sealKey(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if keyID := r.URL.Query().Get("key"); keyID != "" {
		pub, err := h.store.SealKey(r.Context(), id, keyID)
		if err != nil {
			httpError(w, http.StatusNotFound, "no such seal key")
			return
		}
		if seq, hash, err := h.store.SealKeyEnrolment(r.Context(), id, keyID); err == nil {
			w.Header().Set(api.HeaderEnrolment, strconv.FormatInt(seq, 10)+" "+hash)
		}
		w.Write([]byte(pub))
		return
	}
	n, err := h.store.Node(r.Context(), id)
	if err != nil || n.SealPub == "" {
		httpError(w, http.StatusNotFound, "no such enrolled node")
		return
	}
	w.Write([]byte(n.SealPub))
}

// batchRef parses and authorises a batch URL for the calling node.
func (h *Hub) batchRef(w http.ResponseWriter, r *http.Request, role string) (store.Grant, uint64, bool) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		httpError(w, http.StatusBadRequest, "bad sequence number")
		return store.Grant{}, 0, false
	}
	// Grant IDs name files in the payload folder: one that is not an ID
	// goes no further.
	if err := api.ValidID("grant", r.PathValue("grant")); err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return store.Grant{}, 0, false
	}
	g, err := h.store.Grant(r.Context(), r.PathValue("grant"))
	if errors.Is(err, store.ErrNotFound) {
		httpError(w, http.StatusNotFound, "no such grant")
		return g, 0, false
	}
	if err != nil {
		h.internal(w, "load grant", err)
		return g, 0, false
	}
	me := nodeID(r)
	if (role == "provider" && g.Provider != me) || (role == "consumer" && g.Consumer != me) {
		h.auditNode(r.Context(), me, "access.refuse", g.ID, fmt.Sprintf("%s %s as %s", r.Method, r.URL.Path, role))
		httpError(w, http.StatusForbidden, "this grant is not yours")
		return g, 0, false
	}
	if !g.Active(h.now()) {
		httpError(w, http.StatusGone, "grant "+g.ID+" is no longer active")
		return g, 0, false
	}
	if g.Mode != api.ModeBatch {
		// A query or verify grant answers calls; it never carries copies.
		h.auditNode(r.Context(), me, "access.refuse", g.ID, fmt.Sprintf("%s %s on a %s grant", r.Method, r.URL.Path, g.Mode))
		httpError(w, http.StatusForbidden, "grant "+g.ID+" is for mode "+g.Mode+", not batch copies")
		return g, 0, false
	}
	return g, seq, true
}

// upload is an upload in progress.
type upload struct {
	body io.Closer
	part string // its partial file's name
	done chan struct{}
}

// claimUpload makes the caller the only writer of a batch's partial file.
// A newer upload of the same batch wins: when a provider dies mid-upload and
// comes back, the hub may not yet know the old stream is dead, and waiting
// for it would stall the line until a timeout. The old request's body is
// closed, which ends its copy, and the new one waits for it to finish.
func (h *Hub) claimUpload(g string, seq uint64, body io.Closer) (release func()) {
	k := g + "/" + strconv.FormatUint(seq, 10)
	me := &upload{body: body, part: filepath.Base(h.partialPath(g, seq)), done: make(chan struct{})}
	for {
		h.mu.Lock()
		old, busy := h.uploads[k]
		if !busy {
			h.uploads[k] = me
			h.mu.Unlock()
			return func() {
				h.mu.Lock()
				delete(h.uploads, k)
				h.mu.Unlock()
				close(me.done)
			}
		}
		h.mu.Unlock()
		old.body.Close()
		<-old.done
	}
}

func (h *Hub) uploadStatus(w http.ResponseWriter, r *http.Request) {
	g, seq, ok := h.batchRef(w, r, "provider")
	if !ok {
		return
	}
	if _, err := h.store.Batch(r.Context(), g.ID, seq); err == nil {
		w.Header().Set(api.HeaderComplete, "1")
		w.WriteHeader(http.StatusOK)
		return
	}
	var off int64
	if fi, err := os.Stat(h.partialPath(g.ID, seq)); err == nil {
		off = fi.Size()
	}
	w.Header().Set(api.HeaderOffset, strconv.FormatInt(off, 10))
	w.WriteHeader(http.StatusOK)
}

func (h *Hub) upload(w http.ResponseWriter, r *http.Request) {
	g, seq, ok := h.batchRef(w, r, "provider")
	if !ok {
		return
	}
	ctx := r.Context()
	off, err := transport.ParseOffset(r.Header, api.HeaderOffset)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	total, err := transport.ParseOffset(r.Header, api.HeaderTotal)
	if err != nil || total == 0 || total > 1<<30 {
		httpError(w, http.StatusBadRequest, "missing or bad "+api.HeaderTotal+" header")
		return
	}
	release := h.claimUpload(g.ID, seq, r.Body)
	defer release()
	if _, err := h.store.Batch(ctx, g.ID, seq); err == nil {
		w.Header().Set(api.HeaderComplete, "1")
		w.WriteHeader(http.StatusCreated)
		return
	}
	if err := h.inWindow(ctx, g, seq); err != nil {
		var we *windowError
		if !errors.As(err, &we) {
			h.internal(w, "check upload window", err)
			return
		}
		h.metrics.errors.WithLabelValues(errRefused).Inc()
		h.log.Warn("upload refused: beyond the upload window", "provider", g.Provider, "grant", g.ID, "seq", seq, "highest", we.highest, "window", we.window)
		httpError(w, http.StatusConflict, err.Error())
		return
	}
	part := h.partialPath(g.ID, seq)
	counted, err := h.reserve(ctx, g, part, total)
	if err != nil {
		var qe *quotaError
		if !errors.As(err, &qe) {
			h.internal(w, "check provider quota", err)
			return
		}
		h.metrics.errors.WithLabelValues(errRefused).Inc()
		h.log.Warn("upload refused: provider quota", "provider", g.Provider, "grant", g.ID, "seq", seq, "held", qe.held, "size", total, "quota", int64(qe.quota))
		httpError(w, http.StatusInsufficientStorage, err.Error())
		return
	}
	defer counted()
	f, err := os.OpenFile(part, os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		h.internal(w, "open partial upload", err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		h.internal(w, "stat partial upload", err)
		return
	}
	if fi.Size() != off {
		w.Header().Set(api.HeaderOffset, strconv.FormatInt(fi.Size(), 10))
		httpError(w, http.StatusConflict, fmt.Sprintf("upload offset %d does not match the %d bytes held", off, fi.Size()))
		return
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		h.internal(w, "seek partial upload", err)
		return
	}
	n, err := io.Copy(f, io.LimitReader(r.Body, total-off))
	if err != nil {
		// The provider went away or the link broke: keep what arrived so
		// the upload resumes from here.
		h.log.Info("upload interrupted; will resume", "grant", g.ID, "seq", seq, "held", off+n, "err", err)
		return
	}
	if off+n < total {
		w.Header().Set(api.HeaderOffset, strconv.FormatInt(off+n, 10))
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if err := f.Sync(); err != nil {
		h.internal(w, "sync upload", err)
		return
	}
	f.Close()
	if err := h.accept(ctx, g, seq, part, total); err != nil {
		os.Remove(part)
		if errors.Is(err, store.ErrGrantEnded) {
			h.log.Info("batch not stored: its grant ended during the upload", "grant", g.ID, "seq", seq)
			httpError(w, http.StatusGone, "grant "+g.ID+" is no longer active")
			return
		}
		if errors.Is(err, batch.ErrRejected) {
			h.auditNode(ctx, nodeID(r), "batch.reject", fmt.Sprintf("%s/%d", g.ID, seq), err.Error())
			h.metrics.errors.WithLabelValues(errRejected).Inc()
			h.log.Warn("batch rejected", "grant", g.ID, "seq", seq, "err", err)
			httpError(w, http.StatusUnprocessableEntity, "batch rejected: "+err.Error())
			return
		}
		h.internal(w, "store batch", err)
		return
	}
	w.Header().Set(api.HeaderComplete, "1")
	w.WriteHeader(http.StatusCreated)
	h.wake(g.Consumer)
}

// nodeKeys looks up a node's seal keys by key ID. A key the node never
// enrolled with is a rejection, not an I/O error.
func (h *Hub) nodeKeys(ctx context.Context, node string) func(keyID string) (seal.PublicKey, error) {
	return func(keyID string) (seal.PublicKey, error) {
		pub, err := h.store.SealKey(ctx, node, keyID)
		if errors.Is(err, store.ErrNotFound) {
			return seal.PublicKey{}, fmt.Errorf("%w: %s is not a seal key of node %s", batch.ErrUnknownKey, keyID, node)
		}
		if err != nil {
			return seal.PublicKey{}, err
		}
		return seal.ParsePublic(pub)
	}
}

// rejectf makes an error that counts as a rejection of the batch.
func rejectf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", batch.ErrRejected, fmt.Sprintf(format, args...))
}

// accept verifies a fully uploaded batch and stores it.
func (h *Hub) accept(ctx context.Context, g store.Grant, seq uint64, part string, size int64) error {
	info, err := batch.VerifyFile(part, h.nodeKeys(ctx, g.Provider))
	if err != nil {
		return err
	}
	hd := info.Header
	if hd.Grant != g.ID || hd.Sequence != seq || hd.Resource != g.Resource || hd.Provider != g.Provider || hd.Consumer != g.Consumer {
		return rejectf("header names grant %s seq %d resource %s %s→%s, but was uploaded as %s/%d (%s %s→%s)",
			hd.Grant, hd.Sequence, hd.Resource, hd.Provider, hd.Consumer, g.ID, seq, g.Resource, g.Provider, g.Consumer)
	}
	dst := h.payloadPath(g.ID, seq)
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return err
	}
	if err := os.Rename(part, dst); err != nil {
		return err
	}
	if err := fsutil.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	if err := h.store.PutBatch(ctx, store.Batch{Grant: g.ID, Sequence: seq, Resource: g.Resource, Provider: g.Provider,
		Consumer: g.Consumer, Size: size, Rows: hd.Rows, Digest: fmt.Sprintf("%x", info.Digest)}); err != nil {
		if errors.Is(err, store.ErrGrantEnded) {
			os.Remove(dst) // no record names it, and none will
		}
		return err
	}
	h.metrics.batches.WithLabelValues(g.Resource, "in").Inc()
	h.metrics.rows.WithLabelValues(g.Resource, "in").Add(float64(hd.Rows))
	h.metrics.bytes.WithLabelValues(g.Resource, "in").Add(float64(size))
	return nil
}

func (h *Hub) waiter(node string) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.waiters[node]
	if !ok {
		c = make(chan struct{})
		h.waiters[node] = c
	}
	return c
}

func (h *Hub) wake(node string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.waiters[node]; ok {
		close(c)
		delete(h.waiters, node)
	}
}

// deliveries long-polls for batches waiting for the calling consumer.
func (h *Hub) deliveries(w http.ResponseWriter, r *http.Request) {
	me := nodeID(r)
	longPoll(r, func() <-chan struct{} { return h.waiter(me) }, func(last bool) bool {
		bs, err := h.store.Pending(r.Context(), me, 100)
		if err != nil {
			h.internal(w, "list deliveries", err)
			return true
		}
		if len(bs) == 0 && !last {
			return false
		}
		out := []api.Delivery{}
		for _, b := range bs {
			out = append(out, api.Delivery{Grant: b.Grant, Sequence: b.Sequence, Resource: b.Resource, Provider: b.Provider, Size: b.Size, Digest: b.Digest})
		}
		writeJSON(w, out)
		return true
	})
}

func (h *Hub) download(w http.ResponseWriter, r *http.Request) {
	g, seq, ok := h.batchRef(w, r, "consumer")
	if !ok {
		return
	}
	b, err := h.store.Batch(r.Context(), g.ID, seq)
	if err != nil || !b.Purged.IsZero() {
		httpError(w, http.StatusNotFound, "no such batch stored")
		return
	}
	f, err := os.Open(h.payloadPath(g.ID, seq))
	if err != nil {
		h.internal(w, "open payload", err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/vnd.qianzhi.batch")
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", b.Stored, f)
	// Delivered once its last byte went out (a resumed download counts
	// from its Range start); the first delivery is audited.
	var start int64
	fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &start)
	if r.Method == http.MethodGet && cw.status/100 == 2 && start+cw.n == b.Size {
		if err := h.store.MarkDelivered(r.Context(), g.ID, seq); err != nil {
			h.log.Error("record delivery", "grant", g.ID, "seq", seq, "err", err)
		}
		h.metrics.batches.WithLabelValues(g.Resource, "out").Inc()
		h.metrics.rows.WithLabelValues(g.Resource, "out").Add(float64(b.Rows))
		h.metrics.bytes.WithLabelValues(g.Resource, "out").Add(float64(b.Size))
	}
}

// countingWriter counts the body bytes written and keeps the status.
type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (h *Hub) receipt(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	me := nodeID(r)
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return
	}
	var rc receipt.Receipt
	if err := json.Unmarshal(raw, &rc); err != nil {
		h.auditNode(ctx, me, "receipt.reject", "", "malformed: "+err.Error())
		httpError(w, http.StatusBadRequest, "malformed receipt")
		return
	}
	subject := fmt.Sprintf("%s/%d", rc.Grant, rc.Sequence)
	reject := func(why string) {
		h.auditNode(ctx, me, "receipt.reject", subject, why)
		h.log.Warn("receipt rejected", "node", me, "batch", subject, "why", why)
		httpError(w, http.StatusUnprocessableEntity, "receipt rejected: "+why)
	}
	b, err := h.store.Batch(ctx, rc.Grant, rc.Sequence)
	if err != nil {
		reject("no such batch")
		return
	}
	if b.Consumer != me || rc.Consumer != me || rc.Provider != b.Provider || rc.Resource != b.Resource || rc.BatchDigest != b.Digest {
		reject("receipt does not match the stored batch")
		return
	}
	pub, err := h.nodeKeys(ctx, me)(rc.SealKeyID)
	if err != nil {
		reject(err.Error())
		return
	}
	if err := rc.Verify(pub); err != nil {
		reject(err.Error())
		return
	}
	if err := h.store.PutReceipt(ctx, rc.Grant, rc.Sequence, raw, h.now()); err != nil {
		h.internal(w, "store receipt", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// copyProgress records a provider's report on a full copy; its start and
// its end are audited.
func (h *Hub) copyProgress(w http.ResponseWriter, r *http.Request) {
	var c api.Copy
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&c); err != nil || c.ID == "" || c.Updated.IsZero() {
		httpError(w, http.StatusBadRequest, "malformed copy report")
		return
	}
	me := nodeID(r)
	g, err := h.store.Grant(r.Context(), c.Grant)
	if err != nil || g.Provider != me || g.Resource != c.Resource || g.Consumer != c.Consumer {
		httpError(w, http.StatusForbidden, "only the grant's provider reports its copies")
		return
	}
	c.Provider = me
	prev, err := h.store.PutCopy(r.Context(), c)
	if errors.Is(err, store.ErrConflict) {
		httpError(w, http.StatusConflict, err.Error()+"; a copy ID stays with the grant it was first reported under: report this copy under a new ID")
		return
	}
	if err != nil {
		h.internal(w, "record copy", err)
		return
	}
	detail := fmt.Sprintf("%s → %s: %d rows, %d files, %d bytes in %d batches", c.Resource, c.Consumer, c.Rows, c.Files, c.Bytes, c.Batches)
	for _, step := range []struct {
		action string
		now    bool
	}{{"copy.start", prev == ""}, {"copy.done", c.State == api.CopyDone && prev != api.CopyDone}, {"copy.stop", c.State == api.CopyStopped && prev != api.CopyStopped}} {
		if step.now {
			if err := h.store.Audit(r.Context(), me, step.action, c.ID, detail); err != nil {
				h.internal(w, "audit", err)
				return
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// listReceipts lets a grant's provider (or consumer) see which batches were
// applied, with the consumer's signed receipts to check for itself.
func (h *Hub) listReceipts(w http.ResponseWriter, r *http.Request) {
	g, err := h.store.Grant(r.Context(), r.URL.Query().Get("grant"))
	if err != nil {
		httpError(w, http.StatusNotFound, "no such grant")
		return
	}
	if me := nodeID(r); g.Provider != me && g.Consumer != me {
		httpError(w, http.StatusForbidden, "this grant is not yours")
		return
	}
	var bs []store.Batch
	if q := r.URL.Query().Get("seq"); q != "" {
		seq, perr := strconv.ParseUint(q, 10, 64)
		if perr != nil {
			httpError(w, http.StatusBadRequest, "seq must be a batch sequence number")
			return
		}
		b, berr := h.store.Batch(r.Context(), g.ID, seq)
		if berr == nil {
			bs = append(bs, b)
		} else {
			err = nil // no such batch: an empty list
		}
	} else {
		bs, err = h.store.Batches(r.Context(), g.ID)
	}
	if err != nil {
		h.internal(w, "list receipts", err)
		return
	}
	out := []api.ReceiptRecord{}
	for _, b := range bs {
		out = append(out, api.ReceiptRecord{Sequence: b.Sequence, Size: b.Size, Digest: b.Digest, Stored: b.Stored, Receipted: b.Receipted, Receipt: b.Receipt})
	}
	writeJSON(w, out)
}
