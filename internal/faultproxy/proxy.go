// Package faultproxy puts a real TCP proxy between a client and a server so
// that tests can inject network faults: Drop makes the network silent in
// both directions (a partition: writes succeed, nothing arrives), Retarget
// moves the address to another server (a failover behind a stable address,
// as a managed service's endpoint or a virtual IP does), and Pooler moves a
// PostgreSQL session to another backend between two statements, as a
// transaction-mode pooler does. Loopback only.
package faultproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A Proxy forwards every connection made to Addr to a target address.
type Proxy struct {
	ln     net.Listener
	target atomic.Pointer[string]

	dropping atomic.Bool
	mu       sync.Mutex
	heal     chan struct{} // closed by Restore; nil while the network works
	closed   chan struct{} // closed by Close
	once     sync.Once
	conns    conns
	wg       sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, closed: make(chan struct{})}
	p.target.Store(&target)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Drop makes the network silent: from now on, bytes are read from both
// sides and thrown away. Connections stay open, as over a real partition.
func (p *Proxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.heal == nil {
		p.heal = make(chan struct{})
	}
	p.dropping.Store(true)
}

// Restore forwards bytes again (those dropped meanwhile are gone).
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropping.Store(false)
	if p.heal != nil {
		close(p.heal)
		p.heal = nil
	}
}

// healed returns a channel closed when the partition heals, or nil when
// the network works.
func (p *Proxy) healed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.heal == nil {
		return nil
	}
	return p.heal
}

func (p *Proxy) isDropping() bool { return p.dropping.Load() }

// Retarget sends every connection made from now on to target, and closes
// every connection open now, on both sides: clients of the old server see
// their sessions end and reconnect, at the same address, to the new one —
// a failover behind a stable address, with the old server fenced off.
func (p *Proxy) Retarget(target string) {
	p.target.Store(&target)
	p.conns.closeOpen()
}

// Close stops listening, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.once.Do(func() { close(p.closed) })
	err := p.ln.Close()
	p.conns.closeAll()
	p.wg.Wait()
	return err
}

// conns are the connections a proxy opened and has not closed yet, to be
// closed all at once.
type conns struct {
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool
}

// track remembers c for closeAll; once that has run, it closes c and
// reports false.
func (cs *conns) track(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		c.Close()
		return false
	}
	if cs.open == nil {
		cs.open = make(map[net.Conn]struct{})
	}
	cs.open[c] = struct{}{}
	return true
}

// close closes c and forgets it, so that a proxy that lives long does not
// keep every connection it ever made.
func (cs *conns) close(c net.Conn) {
	cs.mu.Lock()
	delete(cs.open, c)
	cs.mu.Unlock()
	c.Close()
}

// closeOpen closes every connection tracked now.
func (cs *conns) closeOpen() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for c := range cs.open {
		c.Close()
		delete(cs.open, c)
	}
}

// closeAll closes every connection tracked, and every one tracked later.
func (cs *conns) closeAll() {
	cs.mu.Lock()
	cs.closed = true
	cs.mu.Unlock()
	cs.closeOpen()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.conns.track(client) {
			return
		}
		p.wg.Add(1)
		go p.connect(client)
	}
}

// dialTimeout bounds the dial to the target: a server that does not
// answer a connection attempt holds up that client only.
const dialTimeout = 10 * time.Second

// connect dials the target for client and relays between them; the dial
// is not in the accept loop, so that a slow one delays no other client.
// While the network is silent it does not dial at all, as no connection
// attempt crosses a real partition: a server that accepted one would wait
// for its startup message (PostgreSQL: authentication_timeout, 60s), and a
// crash-reset waits for every such child before it recovers.
func (p *Proxy) connect(client net.Conn) {
	defer p.wg.Done()
	if healed := p.healed(); healed != nil {
		select {
		case <-healed:
		case <-p.closed:
			p.conns.close(client)
			return
		}
	}
	server, err := net.DialTimeout("tcp", *p.target.Load(), dialTimeout)
	if err != nil {
		p.conns.close(client)
		return
	}
	if !p.conns.track(server) {
		p.conns.close(client)
		return
	}
	p.wg.Add(2)
	go p.pipe(server, client)
	go p.pipe(client, server)
}

// pipe copies from src to dst until either fails, dropping bytes while
// the network is silent, then closes both — unless the network is silent,
// when a close does not travel either: Close closes them later.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer func() {
		if !p.isDropping() {
			p.conns.close(dst)
			p.conns.close(src)
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.isDropping() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, reset or closed: the pipe ends either way
		}
	}
}
