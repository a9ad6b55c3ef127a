package unittest_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/onlyone-go/onlyone/examples/unittest"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/memory"
)

// Three replicas, one registry standing in for PostgreSQL: the report is
// sent three times, one replica at a time, never twice at once.
func TestReportSentByOneReplicaAtATime(t *testing.T) {
	reg := memory.New() // instead of the database
	var sending, overlaps, sent atomic.Int32
	send := func(context.Context) error {
		if sending.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer sending.Add(-1)
		sent.Add(1)
		return nil
	}
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		r := &unittest.Reporter{Lock: reg.Locker("daily-report"), Send: send}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Run(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if sent.Load() != 3 || overlaps.Load() != 0 {
		t.Fatalf("sent %d times with %d overlaps; want 3 and 0", sent.Load(), overlaps.Load())
	}
}

// The lock is taken away while the report is being sent: the send is
// cancelled, and the lock says why.
func TestReportStopsWhenLockLost(t *testing.T) {
	reg := memory.New()
	lock := reg.Locker("daily-report")
	stopped := make(chan error, 1)
	r := &unittest.Reporter{Lock: lock, Send: func(ctx context.Context) error {
		reg.Revoke("daily-report") // as if the database lost our session
		<-ctx.Done()
		// Why the hold ended, read before returning: once the send has
		// returned, the supervisor releases the lock and may take it again.
		select {
		case stopped <- locker.Err(lock):
		default: // a later send, after the lock came back: the test has its answer
		}
		return ctx.Err()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	if err := <-stopped; !errors.Is(err, locker.ErrLost) { // the send's ctx was cancelled by the loss
		t.Fatalf("Err = %v, want ErrLost", err)
	}
	cancel() // Transient would send again once the lock is back
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}
