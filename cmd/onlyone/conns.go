package main

import (
	"cmp"
	"context"
	"fmt"
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
// would put the shared socket into blocking mode under the pool. err is
// the first failure to copy one; the others are copied all the same.
func (s *connSet) dupAll() (out []*os.File, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		sc, ok := c.Conn.(syscall.Conn)
		if !ok {
			err = cmp.Or(err, fmt.Errorf("a %T has no file descriptor", c.Conn))
			continue
		}
		raw, rerr := sc.SyscallConn()
		if rerr == nil {
			rerr = raw.Control(func(fd uintptr) {
				nfd, derr := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
				if derr != nil {
					err = cmp.Or(err, derr)
					return
				}
				out = append(out, os.NewFile(uintptr(nfd), "database connection"))
			})
		}
		err = cmp.Or(err, rerr)
	}
	return out, err
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
