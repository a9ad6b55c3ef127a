// Package faultproxy puts a real TCP proxy between a client and a server so
// that tests can inject network faults: Drop makes the network silent in
// both directions (a partition: writes succeed, nothing arrives), and
// Pooler moves a PostgreSQL session to another backend between two
// statements, as a transaction-mode pooler does. Loopback only.
package faultproxy

import (
	"net"
	"sync"
	"sync/atomic"
)

// A Proxy forwards every connection made to Addr to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	dropping atomic.Bool
	conns    conns
	wg       sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Drop makes the network silent: from now on, bytes are read from both
// sides and thrown away. Connections stay open, as over a real partition.
func (p *Proxy) Drop() { p.dropping.Store(true) }

// Restore forwards bytes again (those dropped meanwhile are gone).
func (p *Proxy) Restore() { p.dropping.Store(false) }

func (p *Proxy) isDropping() bool { return p.dropping.Load() }

// Close stops listening, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.conns.closeAll()
	p.wg.Wait()
	return err
}

// conns are the connections a proxy opened, to be closed all at once.
type conns struct {
	mu     sync.Mutex
	open   []net.Conn
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
	cs.open = append(cs.open, c)
	return true
}

// closeAll closes every connection tracked, and every one tracked later.
func (cs *conns) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for _, c := range cs.open {
		c.Close()
	}
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
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		if !p.conns.track(server) {
			client.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(server, client)
		go p.pipe(client, server)
	}
}

// pipe copies from src to dst until either fails, dropping bytes while
// the network is silent, then closes both — unless the network is silent,
// when a close does not travel either: Close closes them later.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer func() {
		if !p.isDropping() {
			dst.Close()
			src.Close()
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
