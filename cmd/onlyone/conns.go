package main

import (
	"context"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// connSet records the live database connections a pool has dialed, so
// that the watchdog can hold copies of their sockets: a server sees a
// connection end only when its last copy is closed, so a wrapper killed
// with SIGKILL frees its lock only once the watchdog has killed the
// command's whole tree and exited (see watchdog.go).
type connSet struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// wrap makes dial record what it dials, until it is closed.
func (s *connSet) wrap(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		t := &trackedConn{Conn: c, set: s}
		s.mu.Lock()
		if s.conns == nil {
			s.conns = map[*trackedConn]struct{}{}
		}
		s.conns[t] = struct{}{}
		s.mu.Unlock()
		return t, nil
	}
}

// dupAll returns a copy (dup(2), close-on-exec) of the socket of each
// live connection; the caller closes them. The copies are os.NewFile's
// own, not net's File(): passing one of those to a child (its Fd method)
// would put the shared socket into blocking mode under the pool.
func (s *connSet) dupAll() []*os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*os.File
	for c := range s.conns {
		sc, ok := c.Conn.(syscall.Conn)
		if !ok {
			continue
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			continue
		}
		_ = raw.Control(func(fd uintptr) {
			nfd, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
			if err == nil {
				out = append(out, os.NewFile(uintptr(nfd), "database connection"))
			}
		})
	}
	return out
}

// A trackedConn leaves its set when it is closed.
type trackedConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.set.mu.Lock()
		delete(c.set.conns, c)
		c.set.mu.Unlock()
	})
	return c.Conn.Close()
}
