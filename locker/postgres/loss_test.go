package postgres_test

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLossKeepsLockForGrace freezes the holder's backend (SIGSTOP of the
// server process, as a stalled server or a network that delays without
// breaking would), so that no heartbeat answers and the holder gives the
// lock up. The backend is resumed the moment Lost closes. The waiter must
// not be granted the lock before Grace has passed since Lost closed: the
// holder's work may need all of it to stop, and destroying the session at
// the loss would let the resumed backend see the socket close and free the
// lock at once (the review that found it measured 1.5–2.5s of overlap).
func TestLossKeepsLockForGrace(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		holder, waiter := e.locker(t, name, fast...), e.locker(t, name, fast...)
		if err := holder.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		granted := acquireAsync(t, waiter)
		eventually(t, 5*time.Second, "the waiter waits", func() bool { return e.waiting(t, holder.Key()) })
		resume := e.freezeHolder(t, holder.Key())
		defer resume()
		select {
		case <-holder.Lost():
		case <-time.After(10 * time.Second):
			t.Fatal("Lost did not close while the backend was stopped")
		}
		lost := time.Now()
		resume()
		grace := holder.Grace()
		select {
		case at := <-granted:
			// The bound is the Grace itself, less what the test's own
			// scheduling may have added to when it saw Lost close.
			if gap := at.Sub(lost); gap < grace-100*time.Millisecond {
				t.Errorf("the waiter was granted %v after the holder's Lost closed, want ≥ Grace (%v)", gap, grace)
			} else {
				t.Logf("granted %v after Lost (Grace %v)", gap.Round(time.Millisecond), grace)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the waiter was not granted the lock")
		}
		if err := holder.Release(ctx); err != nil {
			t.Errorf("Release after the loss: %v", err)
		}
		if err := waiter.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// freezeHolder stops (SIGSTOP) the server backend that holds key, as a
// stalled server or a network that delays without breaking would, and
// returns the func that resumes it; calling it again does nothing.
func (e *env) freezeHolder(t *testing.T, key int64) (resume func()) {
	t.Helper()
	pids := e.holders(t, key)
	if len(pids) != 1 {
		t.Fatalf("holders: %v, want one", pids)
	}
	backend := pids[0]
	if err := syscall.Kill(backend, syscall.SIGSTOP); err != nil {
		t.Skipf("skipping: cannot stop the server's backend %d: %v", backend, err)
	}
	var once sync.Once
	return func() { once.Do(func() { _ = syscall.Kill(backend, syscall.SIGCONT) }) }
}
