package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A connection's copy keeps it open for the peer after the pool closed
// it, passing the copy to a child leaves the pool's socket non-blocking,
// and a closed connection is no longer copied.
func TestConnSetCopiesOutliveTheConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var set connSet
	var d net.Dialer
	c, err := set.wrap(d.DialContext)(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()

	files, err := set.dupAll()
	if err != nil || len(files) != 1 {
		t.Fatalf("dupAll: %d files, %v; want 1, nil", len(files), err)
	}
	// As startWatchdog does: the copy goes to a child through ExtraFiles.
	child := exec.Command("true")
	child.ExtraFiles = files
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	raw, err := c.(*trackedConn).Conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	_ = raw.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
	if err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Fatalf("the pool's socket lost O_NONBLOCK (flags %#x, %v): its deadlines no longer work", flags, err)
	}

	c.Close()
	if more, _ := set.dupAll(); len(more) != 0 {
		t.Errorf("a closed connection was copied again")
	}
	// The copy is open: the peer sees no end of the connection.
	peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the peer read %v while a copy was open, want a timeout", err)
	}
	files[0].Close()
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the peer read %v after the last copy closed, want the end of the connection", err)
	}
}
