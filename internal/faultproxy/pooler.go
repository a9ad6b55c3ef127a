package faultproxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// A Pooler forwards PostgreSQL connections to a server and, on Move, puts
// each client's next statement on a new backend, as a transaction-mode
// pooler (PgBouncer) may between two transactions. The old backend is kept
// open, with its locks, as a pooler keeps it in its pool. It speaks only as
// much of the protocol as that needs, with trust authentication.
type Pooler struct {
	ln     net.Listener
	target string
	moves  atomic.Int64 // incremented by Move

	conns conns
	wg    sync.WaitGroup
}

// StartPooler listens on a free loopback port and forwards to target.
func StartPooler(target string) (*Pooler, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Pooler{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the pooler's host:port.
func (p *Pooler) Addr() string { return p.ln.Addr().String() }

// Move makes every client's next message go to a new backend.
func (p *Pooler) Move() { p.moves.Add(1) }

// Close closes every connection and waits for the pooler's goroutines.
func (p *Pooler) Close() error {
	err := p.ln.Close()
	p.conns.closeAll()
	p.wg.Wait()
	return err
}

func (p *Pooler) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil || !p.conns.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			_ = p.serve(c)
		}()
	}
}

const (
	sslRequest    = 80877103
	gssencRequest = 80877104
)

// session is one client's connection and the backend it is on now.
type session struct {
	client net.Conn
	mu     sync.Mutex
	server net.Conn // the current backend; replies from others are dropped
}

func (s *session) current() net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.server
}

// serve relays one client, moving it to a new backend when asked.
func (p *Pooler) serve(client net.Conn) error {
	defer p.conns.close(client)
	// Startup: answer SSL and GSS requests with "no", keep the startup
	// message to replay on every new backend.
	var startup []byte
	for startup == nil {
		msg, err := readUntyped(client)
		if err != nil {
			return err
		}
		switch binary.BigEndian.Uint32(msg[4:8]) {
		case sslRequest, gssencRequest:
			if _, err := client.Write([]byte{'N'}); err != nil {
				return err
			}
		default:
			startup = msg
		}
	}
	s := &session{client: client}
	if err := p.attach(s, startup, false); err != nil {
		return err
	}
	seen := p.moves.Load()
	for {
		msg, err := readTyped(client)
		if err != nil {
			return err
		}
		if m := p.moves.Load(); m != seen {
			seen = m
			if err := p.attach(s, startup, true); err != nil {
				return err
			}
		}
		if _, err := s.current().Write(msg); err != nil {
			return err
		}
	}
}

// attach connects s to a new backend. The first backend's startup replies
// go to the client; a later one's are read up to ReadyForQuery and dropped,
// as the client has had its own.
func (p *Pooler) attach(s *session, startup []byte, quiet bool) error {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return err
	}
	if !p.conns.track(server) {
		return net.ErrClosed
	}
	if _, err := server.Write(startup); err != nil {
		return err
	}
	if quiet {
		for {
			msg, err := readTyped(server)
			if err != nil {
				return err
			}
			if msg[0] == 'E' {
				return fmt.Errorf("faultproxy: new backend refused the session")
			}
			if msg[0] == 'Z' {
				break
			}
		}
	}
	s.mu.Lock()
	s.server = server
	s.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 && s.current() == server {
				if _, werr := s.client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return nil
}

// readUntyped reads a startup-phase message: length, then body.
func readUntyped(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > 1<<20 {
		return nil, fmt.Errorf("faultproxy: bad startup message length %d", n)
	}
	msg := make([]byte, n)
	copy(msg, hdr[:])
	_, err := io.ReadFull(r, msg[4:])
	return msg, err
}

// readTyped reads a typed message: type byte, length, then body.
func readTyped(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 1<<30 {
		return nil, fmt.Errorf("faultproxy: bad message length %d", n)
	}
	msg := make([]byte, 1+n)
	copy(msg, hdr[:])
	_, err := io.ReadFull(r, msg[5:])
	return msg, err
}
