package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Connections without a client certificate are what anyone who reaches
// the port can open (enrolment needs no certificate), so they are capped:
// past the cap a connection whose handshake ends without a certificate is
// closed at once. Connections with a certificate are never counted, so a
// flood of anonymous ones cannot keep the agents out.

// DefaultMaxAnonymous is the cap when Server.MaxAnonymous is 0.
const DefaultMaxAnonymous = 256

// errTooManyAnonymous fails a handshake past the cap.
var errTooManyAnonymous = errors.New("too many connections without a client certificate; enrol with a token, or try again later")

// anonGate counts the open connections that presented no certificate.
type anonGate struct {
	max int
	log *slog.Logger

	mu       sync.Mutex
	open     map[any]struct{} // *tls.Conn or *quic.Conn
	refused  int              // since the last warning
	lastWarn time.Time
}

func newAnonGate(max int, log *slog.Logger) *anonGate {
	if max <= 0 {
		max = DefaultMaxAnonymous
	}
	if log == nil {
		log = slog.Default()
	}
	return &anonGate{max: max, log: log, open: map[any]struct{}{}}
}

// acquire counts a connection; false when the cap is reached.
func (g *anonGate) acquire(c any) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.open[c]; ok {
		return true
	}
	if len(g.open) >= g.max {
		g.refused++
		// One warning a minute at most: the flood is the attack.
		if time.Since(g.lastWarn) >= time.Minute {
			g.log.Warn("connections without a client certificate refused: at the cap", "cap", g.max, "refused", g.refused)
			g.lastWarn, g.refused = time.Now(), 0
		}
		return false
	}
	g.open[c] = struct{}{}
	return true
}

// release forgets a connection (closed, or never counted).
func (g *anonGate) release(c any) {
	g.mu.Lock()
	delete(g.open, c)
	g.mu.Unlock()
}

// count is the connections without a certificate open now.
func (g *anonGate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.open)
}

// gatedListener makes the TLS connections of a TCP listener, each with a
// handshake check that counts it if it has no client certificate. The
// http.Server's ConnState hook releases it when it closes.
type gatedListener struct {
	net.Listener
	tls  *tls.Config
	gate *anonGate
}

func (l *gatedListener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cfg := l.tls.Clone()
	var tc *tls.Conn
	verify := l.tls.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if verify != nil {
			if err := verify(cs); err != nil {
				return err
			}
		}
		if len(cs.PeerCertificates) == 0 && !l.gate.acquire(tc) {
			return errTooManyAnonymous
		}
		return nil
	}
	tc = tls.Server(raw, cfg)
	return tc, nil
}

// connState releases closed connections from the gate.
func (g *anonGate) connState(c net.Conn, s http.ConnState) {
	if s == http.StateClosed || s == http.StateHijacked {
		g.release(c)
	}
}

// gatedQUIC hands on QUIC connections once their handshake is complete,
// counting those without a client certificate and closing those past the
// cap before any request of theirs is served.
type gatedQUIC struct {
	*quic.EarlyListener
	gate *anonGate

	once  sync.Once
	conns chan *quic.Conn
	done  chan struct{} // closed when the listener fails or closes
	err   error
}

func newGatedQUIC(ln *quic.EarlyListener, gate *anonGate) *gatedQUIC {
	return &gatedQUIC{EarlyListener: ln, gate: gate, conns: make(chan *quic.Conn), done: make(chan struct{})}
}

func (l *gatedQUIC) Accept(ctx context.Context) (*quic.Conn, error) {
	l.once.Do(func() { go l.loop() })
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// loop accepts connections and waits for each one's handshake on its own,
// so that a slow handshake holds no other back.
func (l *gatedQUIC) loop() {
	for {
		c, err := l.EarlyListener.Accept(context.Background())
		if err != nil {
			l.err = err
			close(l.done)
			return
		}
		go l.admit(c)
	}
}

func (l *gatedQUIC) admit(c *quic.Conn) {
	select {
	case <-c.HandshakeComplete():
	case <-c.Context().Done():
		return
	}
	if len(c.ConnectionState().TLS.PeerCertificates) == 0 {
		if !l.gate.acquire(c) {
			c.CloseWithError(quic.ApplicationErrorCode(0x107), errTooManyAnonymous.Error()) // H3_EXCESSIVE_LOAD
			return
		}
		go func() {
			<-c.Context().Done()
			l.gate.release(c)
		}()
	}
	select {
	case l.conns <- c:
	case <-l.done:
		c.CloseWithError(0, "server closed")
	case <-c.Context().Done():
	}
}
