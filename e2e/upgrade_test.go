package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gate forwards TCP and UDP from its own loopback port to the hub's, and
// can drop UDP: a firewall that blocks QUIC and later lets it through.
type gate struct {
	addr      string
	udpClosed atomic.Bool
	tcp       net.Listener
	udp       net.PacketConn
	wg        sync.WaitGroup
}

func newGate(t *testing.T, upstream string) *gate {
	t.Helper()
	port := freePort(t)
	g := &gate{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	var err error
	if g.tcp, err = net.Listen("tcp", g.addr); err != nil {
		t.Fatal(err)
	}
	if g.udp, err = net.ListenPacket("udp", g.addr); err != nil {
		t.Fatal(err)
	}
	g.wg.Add(2)
	go g.serveTCP(upstream)
	go g.serveUDP(upstream)
	t.Cleanup(func() { g.tcp.Close(); g.udp.Close(); g.wg.Wait() })
	return g
}

func (g *gate) serveTCP(upstream string) {
	defer g.wg.Done()
	for {
		c, err := g.tcp.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			go io.Copy(u, c)
			io.Copy(c, u)
		}()
	}
}

func (g *gate) serveUDP(upstream string) {
	defer g.wg.Done()
	var mu sync.Mutex
	peers := map[string]net.Conn{} // client address → socket to the hub
	buf := make([]byte, 65536)
	for {
		n, from, err := g.udp.ReadFrom(buf)
		if err != nil {
			mu.Lock()
			for _, p := range peers {
				p.Close()
			}
			mu.Unlock()
			return
		}
		if g.udpClosed.Load() {
			continue
		}
		mu.Lock()
		p, ok := peers[from.String()]
		if !ok {
			if p, err = net.Dial("udp", upstream); err != nil {
				mu.Unlock()
				continue
			}
			peers[from.String()] = p
			go func(p net.Conn, to net.Addr) {
				b := make([]byte, 65536)
				for {
					n, err := p.Read(b)
					if err != nil {
						return
					}
					if !g.udpClosed.Load() {
						g.udp.WriteTo(b[:n], to)
					}
				}
			}(p, from)
		}
		mu.Unlock()
		p.Write(buf[:n])
	}
}

// TestQUICComesBack: with UDP blocked the agents fall back to TLS/TCP;
// once UDP is let through they move back to QUIC on their own, and data
// keeps flowing across the switch.
func TestQUICComesBack(t *testing.T) {
	h := newHub(t, hubOpts{})
	h.start()
	g := newGate(t, h.addr)
	g.udpClosed.Store(true)
	src := filepath.Join(t.TempDir(), "outbox")
	dst := filepath.Join(t.TempDir(), "inbox")
	os.MkdirAll(src, 0o755)
	before := writeFiles(t, src, []fileSpec{{"over-tcp.bin", 3 << 20}})
	opts := nodeOpts{hubAddr: g.addr, extra: "retry_quic: 2s\n"}
	popts, copts := opts, opts
	popts.resources = fileResource("prov.q", src, "")
	copts.subs = fileSub("prov.q", dst)
	prov := newNode(t, h, "prov-q", popts)
	cons := newNode(t, h, "cons-q", copts)
	prov.start()
	cons.start()
	h.grant("prov.q", "cons-q")
	waitArrived(t, dst, before, time.Minute)
	for _, n := range []*node{prov, cons} {
		if tr := n.status().Transport; tr != "tcp" {
			t.Fatalf("%s uses %q with UDP blocked, want tcp", n.id, tr)
		}
	}

	g.udpClosed.Store(false)
	for _, n := range []*node{prov, cons} {
		waitFor(t, 30*time.Second, n.id+" to move back to QUIC", func() bool { return n.status().Transport == "quic" })
	}
	after := writeFiles(t, src, []fileSpec{{"over-quic.bin", 3 << 20}})
	waitArrived(t, dst, after, time.Minute)
}
