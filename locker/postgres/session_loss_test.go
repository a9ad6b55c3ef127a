package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// TestSessionLossKeepsNamesForGrace is TestLossKeepsLockForGrace for a
// Session that holds two names: its backend is frozen until both are lost.
// One name is released and acquired again at once, which starts a new run
// of the Session — and must not free the other name, whose work may still
// be stopping, before Grace has passed since the loss.
func TestSessionLossKeepsNamesForGrace(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		base := uniqueName(t)
		s := newSession(t, e.db, append(quick, postgres.WithSpread(false))...)
		la, lc := sessionLocker(t, s, base+".a"), sessionLocker(t, s, base+".c")
		for _, l := range []locker.Locker{la, lc} {
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
		}
		waiter := e.locker(t, base+".c", quick...)
		granted := acquireAsync(t, waiter)
		eventually(t, 5*time.Second, "the waiter waits", func() bool { return e.waiting(t, waiter.Key()) })
		resume := e.freezeHolder(t, waiter.Key())
		defer resume()
		for _, l := range []locker.Locker{la, lc} {
			select {
			case <-l.Lost():
			case <-time.After(10 * time.Second):
				t.Fatal("Lost did not close while the backend was stopped")
			}
		}
		lost := time.Now()
		resume()
		// a's work has stopped: it is released and taken again, on a new
		// run of the Session. c's work is still stopping.
		if err := la.Release(ctx); err != nil {
			t.Fatal(err)
		}
		again := make(chan error, 1)
		go func() { again <- la.Acquire(ctx) }()
		grace, _ := locker.Grace(lc)
		select {
		case at := <-granted:
			if gap := at.Sub(lost); gap < grace-100*time.Millisecond {
				t.Errorf("the waiter was granted c %v after the Session's Lost closed, want ≥ Grace (%v)", gap, grace)
			} else {
				t.Logf("granted %v after Lost (Grace %v)", gap.Round(time.Millisecond), grace)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the waiter was not granted the lock")
		}
		if err := lc.Release(ctx); err != nil {
			t.Errorf("Release of c after the loss: %v", err)
		}
		if err := <-again; err != nil {
			t.Fatalf("a acquired again: %v", err)
		}
		if err := la.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := waiter.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestSessionCloseWaitsForRelease closes a Session while one of its names
// is held and its work still runs: Close closes the name's Lost at once,
// but must not free the name — which ending the Session's connection would
// — before the work has stopped and released it (or Grace has passed).
func TestSessionCloseWaitsForRelease(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		s := newSession(t, e.db, append(quick, postgres.WithSpread(false))...)
		l := sessionLocker(t, s, name)
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		waiter := e.locker(t, name, quick...)
		granted := acquireAsync(t, waiter)
		eventually(t, 5*time.Second, "the waiter waits", func() bool { return e.waiting(t, waiter.Key()) })
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		select {
		case <-l.Lost():
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not close the name's Lost")
		}
		// The work takes a while to stop (well within Grace), then releases.
		stopping := time.NewTimer(400 * time.Millisecond)
		select {
		case at := <-granted:
			t.Fatalf("the waiter was granted the name %v before its work stopped", time.Since(at))
		case <-stopping.C:
		}
		released := time.Now()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-granted:
			if at.Before(released) {
				t.Errorf("the waiter was granted the name %v before its Release", released.Sub(at))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the waiter was not granted the name")
		}
		if err := <-closed; err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := waiter.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
