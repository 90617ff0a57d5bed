// Package transport carries the wire protocol between agents and the hub:
// HTTP/3 over mutual-TLS QUIC as the primary transport, and the same HTTP
// handlers over HTTP/2 on TLS/TCP as the fallback for networks that block
// UDP. Agents always dial out; one long-lived connection per agent
// multiplexes control, uploads and deliveries as concurrent streams.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Transport names, as configured and as reported in status.
const (
	Auto = "auto"
	QUIC = "quic"
	TCP  = "tcp"
)

// quicConfig keeps quic-go's defaults (measured fastest here) and only sets
// liveness: keep-alives so an idle agent's connection survives NAT and
// firewalls, and a short handshake timeout so the TCP fallback is quick.
func quicConfig() *quic.Config {
	return &quic.Config{
		KeepAlivePeriod:      15 * time.Second,
		MaxIdleTimeout:       60 * time.Second,
		HandshakeIdleTimeout: 4 * time.Second,
	}
}

// Server serves one handler over QUIC and TLS/TCP.
type Server struct {
	Handler http.Handler
	TLS     *tls.Config
	Logger  *slog.Logger
	// ResetKey, kept across restarts, lets a restarted server reset the
	// QUIC connections of its previous life at once (a stateless reset),
	// so clients reconnect immediately instead of waiting for an idle
	// timeout.
	ResetKey *quic.StatelessResetKey
	// MaxAnonymous caps the connections open at once whose handshake
	// ended without a client certificate; 0 means DefaultMaxAnonymous.
	MaxAnonymous int

	gate *anonGate
	udp  net.PacketConn
	qtr  *quic.Transport
	tcp  net.Listener
	h3   *http3.Server
	h2   *http.Server
	once sync.Once
}

// Listen binds the listeners. Either address may be empty to disable that
// transport. When tcpAddr ends in ":0" and quicAddr equals it, both bind the
// same free port number, as a real hub does.
func (s *Server) Listen(quicAddr, tcpAddr string) error {
	if tcpAddr != "" {
		ln, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			return fmt.Errorf("listen tcp %s: %w", tcpAddr, err)
		}
		s.tcp = ln
		if quicAddr == tcpAddr {
			quicAddr = ln.Addr().String()
		}
	}
	if quicAddr != "" {
		pc, err := net.ListenPacket("udp", quicAddr)
		if err != nil {
			if s.tcp != nil {
				s.tcp.Close()
			}
			return fmt.Errorf("listen udp %s: %w", quicAddr, err)
		}
		s.udp = pc
	}
	if s.tcp == nil && s.udp == nil {
		return errors.New("no listener: enable QUIC, TCP or both")
	}
	return nil
}

// QUICAddr is the bound UDP address, or "".
func (s *Server) QUICAddr() string {
	if s.udp == nil {
		return ""
	}
	return s.udp.LocalAddr().String()
}

// TCPAddr is the bound TCP address, or "".
func (s *Server) TCPAddr() string {
	if s.tcp == nil {
		return ""
	}
	return s.tcp.Addr().String()
}

// Server timeouts. None of them may end a long poll (an agent waits up to
// 25 s on deliveries, grants and calls, sending nothing) or a long upload
// that keeps moving: the idle timeouts count only time without any
// request, and a request body must move at least every bodyIdle, however
// long it takes in all.
const (
	// idleTimeout closes a connection that has had no request for this
	// long. An agent's never idles: it pings every 5 s and long-polls.
	idleTimeout = 2 * time.Minute
	// handshakeTimeout bounds the TLS handshake and the request headers
	// on TCP (QUIC's handshake is bounded by HandshakeIdleTimeout).
	handshakeTimeout = 10 * time.Second
	// bodyIdle is how long a request body may send nothing.
	bodyIdle = time.Minute
)

// Serve runs until ctx is cancelled. Listen must have been called.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 2)
	n := 0
	s.gate = newAnonGate(s.MaxAnonymous, s.Logger)
	handler := bodyDeadline(s.Handler, bodyIdle)
	if s.udp != nil {
		s.h3 = &http3.Server{
			Handler:     handler,
			TLSConfig:   http3.ConfigureTLSConfig(s.TLS.Clone()),
			QUICConfig:  quicConfig(),
			IdleTimeout: idleTimeout,
		}
		s.qtr = &quic.Transport{Conn: s.udp, StatelessResetKey: s.ResetKey}
		ln, err := s.qtr.ListenEarly(s.h3.TLSConfig, s.h3.QUICConfig)
		if err != nil {
			return fmt.Errorf("listen quic: %w", err)
		}
		n++
		go func() { errc <- s.h3.ServeListener(newGatedQUIC(ln, s.gate)) }()
	}
	if s.tcp != nil {
		tc := s.TLS.Clone()
		tc.NextProtos = []string{"h2", "http/1.1"}
		s.h2 = &http.Server{
			Handler:           handler,
			TLSConfig:         tc,
			ReadHeaderTimeout: handshakeTimeout,
			IdleTimeout:       idleTimeout,
			// Pings find a peer gone silent while a stream waits.
			HTTP2:     &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
			ConnState: s.gate.connState,
			ErrorLog:  slogErrorLog(s.Logger),
		}
		n++
		go func() { errc <- s.h2.Serve(&gatedListener{Listener: s.tcp, tls: tc, gate: s.gate}) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		n--
	}
	s.Close()
	for ; n > 0; n-- {
		<-errc
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, quic.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Anonymous is the connections without a client certificate open now.
func (s *Server) Anonymous() int {
	if s.gate == nil {
		return 0
	}
	return s.gate.count()
}

// bodyDeadline gives each request body a read deadline of idle, moved on
// each time bytes arrive: a body that stalls ends, one that moves may
// take as long as it needs.
func bodyDeadline(h http.Handler, idle time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			rc := http.NewResponseController(w)
			if err := rc.SetReadDeadline(time.Now().Add(idle)); err == nil {
				r.Body = &movingBody{ReadCloser: r.Body, rc: rc, idle: idle, set: time.Now()}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// movingBody pushes its read deadline on as bytes arrive (at most a few
// times a deadline, not on every read).
type movingBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	set  time.Time
}

func (b *movingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		// Read in full: what the handler does next (wait for a call's
		// answer, say) is no longer bounded by the body's deadline.
		b.rc.SetReadDeadline(time.Time{})
		return n, err
	}
	if n > 0 {
		if now := time.Now(); now.Sub(b.set) > b.idle/4 {
			b.set = now
			b.rc.SetReadDeadline(now.Add(b.idle))
		}
	}
	return n, err
}

// Close stops both listeners and drops open connections.
func (s *Server) Close() {
	s.once.Do(func() {
		if s.h3 != nil {
			s.h3.Close()
		}
		if s.qtr != nil {
			s.qtr.Close()
		}
		if s.udp != nil {
			s.udp.Close()
		}
		if s.h2 != nil {
			s.h2.Close()
		}
		if s.tcp != nil {
			s.tcp.Close()
		}
	})
}

// Client is an agent's connection to the hub. It picks QUIC or TLS/TCP on
// first use (in auto mode QUIC first, then TCP), keeps that connection for
// every request, and probes again after a network error.
type Client struct {
	Hub    string // host:port
	TLS    *tls.Config
	Mode   string // Auto, QUIC or TCP
	Logger *slog.Logger
	// OnConnect, if set, is called with the transport after each connect.
	OnConnect func(transport string)
	// RetryQUIC is how often, in auto mode while on the TCP fallback, Watch
	// tries QUIC again (UDP may have been opened since); 0 means 5 minutes.
	RetryQUIC time.Duration

	connSem chan struct{} // held while connecting
	mu      sync.Mutex
	rt      http.RoundTripper
	closer  func()
	current string
	inUse   map[http.RoundTripper]int    // requests running, by connection
	retired map[http.RoundTripper]func() // connections Refresh replaced, still draining: their closers
}

// ErrUnreachable wraps every failure to reach the hub at all.
var ErrUnreachable = errors.New("hub unreachable")

func (c *Client) newQUIC() (http.RoundTripper, func()) {
	t := &http3.Transport{TLSClientConfig: c.TLS.Clone(), QUICConfig: quicConfig()}
	return t, func() { t.Close() }
}

func (c *Client) newTCP() (http.RoundTripper, func()) {
	tc := c.TLS.Clone()
	t := &http.Transport{
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
	}
	p := new(http.Protocols)
	p.SetHTTP2(true)
	t.Protocols = p
	// HTTP/2 pings find a dead TCP connection even under long polls.
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 10 * time.Second, PingTimeout: 5 * time.Second}
	return t, func() { t.CloseIdleConnections() }
}

// newTransport makes a connection-to-be over one transport.
func (c *Client) newTransport(mode string) (http.RoundTripper, func()) {
	if mode == QUIC {
		return c.newQUIC()
	}
	return c.newTCP()
}

// connectError is why no transport reached the hub: each one's error,
// kept for errors.Is and errors.As, on one line.
type connectError struct {
	modes []string
	errs  []error
}

func (e *connectError) Error() string {
	parts := make([]string, len(e.errs))
	for i, err := range e.errs {
		parts[i] = e.modes[i] + ": " + err.Error()
	}
	return strings.Join(parts, "; ")
}

func (e *connectError) Unwrap() []error { return e.errs }

// connect chooses a transport by probing the hub.
func (c *Client) connect(ctx context.Context) (http.RoundTripper, string, error) {
	modes := []string{QUIC, TCP}
	switch c.Mode {
	case QUIC:
		modes = []string{QUIC}
	case TCP:
		modes = []string{TCP}
	}
	failed := &connectError{}
	for _, m := range modes {
		rt, closer := c.newTransport(m)
		pctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		err := probe(pctx, rt, c.Hub)
		cancel()
		if err == nil {
			c.mu.Lock()
			if c.closer != nil {
				c.closer()
			}
			c.rt, c.closer, c.current = rt, closer, m
			c.mu.Unlock()
			if c.Logger != nil {
				c.Logger.Info("connected to hub", "hub", c.Hub, "transport", m)
			}
			if c.OnConnect != nil {
				c.OnConnect(m)
			}
			return rt, m, nil
		}
		closer()
		failed.modes, failed.errs = append(failed.modes, m), append(failed.errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", fmt.Errorf("%w at %s (%w); check the hub address, that qz-central runs, and that the firewall lets this server reach it", ErrUnreachable, c.Hub, failed)
}

func probe(ctx context.Context, rt http.RoundTripper, hub string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hub+"/v1/ping", nil)
	if err != nil {
		return err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ping: %s", resp.Status)
	}
	return nil
}

// probeCached pings the hub over the connection a transport already has,
// never dialling a new one (QUIC; a TCP connection to a hub gone away is
// reset by the kernel and needs no ping).
func probeCached(ctx context.Context, rt http.RoundTripper, hub string) error {
	t, ok := rt.(*http3.Transport)
	if !ok {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hub+"/v1/ping", nil)
	if err != nil {
		return err
	}
	resp, err := t.RoundTripOpt(req, http3.RoundTripOpt{OnlyCachedConn: true})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Transport reports the transport in use, or "" when not connected.
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Do sends a request over the current connection, connecting first if
// needed. A network error drops the connection so the next call probes again.
func (c *Client) Do(req *http.Request) (*http.Response, error) {
	rt, done := c.take()
	for attempt := 0; rt == nil; attempt++ {
		if attempt > 0 {
			return nil, fmt.Errorf("%w at %s: the new connection was dropped at once", ErrUnreachable, c.Hub)
		}
		// One connection per agent: concurrent callers wait for the first
		// to connect rather than each dialling (and closing) their own;
		// each stops waiting when its own request is cancelled.
		c.mu.Lock()
		if c.connSem == nil {
			c.connSem = make(chan struct{}, 1)
		}
		sem := c.connSem
		c.mu.Unlock()
		select {
		case sem <- struct{}{}:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
		c.mu.Lock()
		connected := c.rt != nil
		c.mu.Unlock()
		if !connected {
			if _, _, err := c.connect(req.Context()); err != nil {
				<-sem
				return nil, err
			}
		}
		<-sem
		rt, done = c.take()
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		done()
		if req.Context().Err() != nil {
			return nil, err // this request was cancelled; the connection is fine
		}
		c.mu.Lock()
		if c.rt == rt {
			c.dropLocked()
		}
		c.mu.Unlock()
		return nil, err
	}
	resp.Body = &countedBody{ReadCloser: resp.Body, done: done}
	return resp, nil
}

// take returns the current connection and counts a request on it until
// the returned func is called (once the response body is closed), in one
// step, so that Refresh cannot close a connection a request has just
// taken. It returns nil when not connected.
func (c *Client) take() (http.RoundTripper, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rt := c.rt
	if rt == nil {
		return nil, nil
	}
	if c.inUse == nil {
		c.inUse = map[http.RoundTripper]int{}
	}
	c.inUse[rt]++
	var once sync.Once
	return rt, func() {
		once.Do(func() {
			c.mu.Lock()
			if c.inUse[rt]--; c.inUse[rt] <= 0 {
				delete(c.inUse, rt)
			}
			c.mu.Unlock()
		})
	}
}

type countedBody struct {
	io.ReadCloser
	done func()
}

func (b *countedBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// Refresh moves new requests to a new connection over the same transport,
// made with the TLS configuration as it is now (a renewed certificate, say).
// Requests running on the old connection finish there; it is closed once
// they have, or after drain at the latest. If the new connection cannot be
// made, the old one stays and Refresh returns the error.
func (c *Client) Refresh(ctx context.Context, drain time.Duration) error {
	c.mu.Lock()
	old, oldCloser, mode := c.rt, c.closer, c.current
	c.mu.Unlock()
	if old == nil {
		return nil // the next request connects afresh anyway
	}
	rt, closer := c.newTransport(mode)
	pctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	err := probe(pctx, rt, c.Hub)
	cancel()
	if err != nil {
		closer()
		return fmt.Errorf("refresh the hub connection: %w", err)
	}
	c.mu.Lock()
	if c.rt != old {
		c.mu.Unlock()
		closer() // it changed meanwhile: that one is new already
		return nil
	}
	c.rt, c.closer = rt, closer
	if c.retired == nil {
		c.retired = map[http.RoundTripper]func(){}
	}
	c.retired[old] = oldCloser
	c.mu.Unlock()
	go func() {
		deadline := time.Now().Add(drain)
		lastPing := time.Now()
		for time.Now().Before(deadline) {
			c.mu.Lock()
			n, draining := c.inUse[old], c.retired[old] != nil
			c.mu.Unlock()
			if n == 0 || !draining {
				break
			}
			// Nobody else watches this connection: ping it now and then,
			// so that a hub gone away fails its waiting requests (a QUIC
			// long poll sends nothing and would wait out the idle timeout).
			if time.Since(lastPing) >= 5*time.Second {
				lastPing = time.Now()
				pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := probeCached(pctx, old, c.Hub)
				cancel()
				if err != nil {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.mu.Lock()
		if closer := c.retired[old]; closer != nil {
			delete(c.retired, old)
			closer()
		}
		c.mu.Unlock()
	}()
	return nil
}

// Watch checks the connection every period with a ping and drops it when
// the ping fails, so requests waiting on a dead connection (the hub was
// killed and came back, a middlebox forgot the flow) fail now and reconnect,
// instead of waiting out QUIC's idle timeout. It returns when ctx ends.
func (c *Client) Watch(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	failed := 0
	lastTry := time.Now()
	retry := c.RetryQUIC
	if retry <= 0 {
		retry = 5 * time.Minute
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		rt, current := c.rt, c.current
		c.mu.Unlock()
		if rt == nil {
			continue
		}
		if (c.Mode == Auto || c.Mode == "") && current == TCP && time.Since(lastTry) >= retry {
			lastTry = time.Now()
			c.tryQUIC(ctx, rt)
		}
		pctx, cancel := context.WithTimeout(ctx, 2*period)
		err := probe(pctx, rt, c.Hub)
		cancel()
		if err == nil || ctx.Err() != nil {
			failed = 0
			continue
		}
		// One slow ping behind bulk data on a thin link is not a dead
		// connection; two in a row are.
		if failed++; failed < 2 {
			continue
		}
		failed = 0
		c.mu.Lock()
		if c.rt == rt {
			if c.Logger != nil {
				c.Logger.Warn("hub connection is dead; reconnecting", "transport", c.current, "err", err)
			}
			c.dropLocked()
		}
		c.mu.Unlock()
	}
}

// tryQUIC moves new requests from the TCP fallback to QUIC when QUIC works
// again. Requests already running on TCP finish there.
func (c *Client) tryQUIC(ctx context.Context, tcp http.RoundTripper) {
	rt, closer := c.newTransport(QUIC)
	pctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	err := probe(pctx, rt, c.Hub)
	cancel()
	if err != nil {
		closer()
		return
	}
	c.mu.Lock()
	if c.rt != tcp {
		c.mu.Unlock()
		closer()
		return
	}
	c.closer()
	c.rt, c.closer, c.current = rt, closer, QUIC
	c.mu.Unlock()
	if c.Logger != nil {
		c.Logger.Info("connected to hub", "hub", c.Hub, "transport", QUIC, "was", TCP)
	}
	if c.OnConnect != nil {
		c.OnConnect(QUIC)
	}
}

// URL builds an absolute URL on the hub.
func (c *Client) URL(path string) string { return "https://" + c.Hub + path }

// Close drops the connection.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked()
}

// dropLocked closes the current connection and those retired by Refresh
// that are still draining: when the current one is dead, so is the hub
// they lead to, and their requests (long polls, which send nothing while
// they wait) would otherwise hang until QUIC's idle timeout, unwatched.
// Callers hold c.mu.
func (c *Client) dropLocked() {
	if c.closer != nil {
		c.closer()
	}
	c.rt, c.closer, c.current = nil, nil, ""
	for rt, closer := range c.retired {
		closer()
		delete(c.retired, rt)
	}
}

// ParseOffset reads a non-negative integer header.
func ParseOffset(h http.Header, name string) (int64, error) {
	v := h.Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad %s header %q", name, v)
	}
	return n, nil
}
