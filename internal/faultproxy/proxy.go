// Package faultproxy puts a real TCP proxy between a client and a server so
// that tests can inject network faults: Drop makes the network silent in
// both directions (a partition: writes succeed, nothing arrives), and
// Pooler moves a PostgreSQL session to another backend between two
// statements, as a transaction-mode pooler does. Loopback only.
package faultproxy

import (
	"net"
	"sync"
)

// A Proxy forwards every connection made to Addr to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	dropping bool
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
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
	p.dropping = true
	p.mu.Unlock()
}

// Restore forwards bytes again (those dropped meanwhile are gone).
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.dropping = false
	p.mu.Unlock()
}

func (p *Proxy) isDropping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropping
}

// Close stops listening, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track remembers c for Close; it reports false once the proxy is closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(client) {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		if !p.track(server) {
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
