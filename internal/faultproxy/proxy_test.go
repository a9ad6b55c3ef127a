package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server answers each line with its name and the line, until closed.
type server struct {
	ln net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	cs []net.Conn
}

func startServer(t *testing.T, name string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.cs = append(s.cs, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, name+" "+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.cs {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func ask(t *testing.T, c net.Conn, r *bufio.Reader, line string) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := r.ReadString('\n')
	return strings.TrimSpace(got), err
}

// TestRetarget: after Retarget, a connection open before is closed (its
// next read ends, it does not hang), and a new connection at the same
// address reaches the new server.
func TestRetarget(t *testing.T) {
	a, b := startServer(t, "a"), startServer(t, "b")
	p, err := faultproxy.Start(a.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	old, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldR := bufio.NewReader(old)
	if got, err := ask(t, old, oldR, "1"); err != nil || got != "a 1" {
		t.Fatalf("before Retarget: %q, %v; want \"a 1\"", got, err)
	}

	p.Retarget(b.ln.Addr().String())
	var ne net.Error
	if got, err := ask(t, old, oldR, "2"); err == nil {
		t.Fatalf("a connection made before Retarget still answers: %q", got)
	} else if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("a connection made before Retarget hangs instead of closing: %v", err)
	}

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := ask(t, c, bufio.NewReader(c), "3"); err != nil || got != "b 3" {
		t.Fatalf("after Retarget: %q, %v; want \"b 3\"", got, err)
	}
}

// TestDropAndRestore: while dropping, nothing arrives; after Restore, the
// same connection carries bytes again.
func TestDropAndRestore(t *testing.T) {
	a := startServer(t, "a")
	p, err := faultproxy.Start(a.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	p.Drop()
	_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := io.WriteString(c, "lost\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("a reply crossed a silent network: %q", got)
	}
	p.Restore()
	if got, err := ask(t, c, r, "back"); err != nil || got != "a back" {
		t.Fatalf("after Restore: %q, %v; want \"a back\"", got, err)
	}
}

// TestDropHoldsNewConnections: a connection made during a partition does
// not reach the server until the partition heals.
func TestDropHoldsNewConnections(t *testing.T) {
	a := startServer(t, "a")
	p, err := faultproxy.Start(a.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Drop()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := io.WriteString(c, "early\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("a connection made during a partition was answered: %q", got)
	}
	a.mu.Lock()
	reached := len(a.cs)
	a.mu.Unlock()
	if reached != 0 {
		t.Fatalf("%d connections reached the server during the partition", reached)
	}
	p.Restore()
	if got, err := ask(t, c, r, "late"); err != nil || got != "a early" {
		t.Fatalf("after Restore: %q, %v; want the line sent during the partition, answered", got, err)
	}
}
