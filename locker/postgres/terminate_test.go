package postgres_test

import (
	"context"
	"testing"
	"time"
)

// TestTerminateNoticed ends the holder's session with pg_terminate_backend,
// as an operator would, at phases spread over the heartbeat interval: the
// holder's Lost must close within 250ms every time (the heartbeat keeps a
// statement in flight, so the closed socket is seen at once).
func TestTerminateNoticed(t *testing.T) {
	const trials = 8
	const bound = 250 * time.Millisecond
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		var worst time.Duration
		for i := 0; i < trials; i++ {
			l := e.locker(t, uniqueName(t)) // default settings: a 1s heartbeat
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			// A phase within the heartbeat interval (jitter, not
			// synchronisation).
			time.Sleep(time.Duration(i) * time.Second / trials)
			terminated := time.Now()
			e.terminate(t, l.Key())
			select {
			case <-l.Lost():
			case <-time.After(5 * time.Second):
				t.Fatalf("trial %d: Lost did not close within 5s of the terminate", i)
			}
			took := time.Since(terminated)
			worst = max(worst, took)
			if took > bound {
				t.Errorf("trial %d: Lost closed %v after the terminate, want ≤ %v", i, took, bound)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%d terminates: Lost closed at worst %v after", trials, worst.Round(100*time.Microsecond))
	})
}

// TestIdleLoad holds the lock at the defaults for a few seconds and counts,
// in pg_stat_statements, the statements the holder's session ran: about
// one per HeartbeatInterval, though one is always in flight.
func TestIdleLoad(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		if _, err := e.admin.Exec("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		l := e.locker(t, uniqueName(t)) // a 1s heartbeat
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		count := func() int64 {
			var n int64
			if err := e.admin.QueryRow(`SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
				WHERE query LIKE '%pg_sleep%' AND query NOT LIKE '%pg_stat_statements%'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		before, start := count(), time.Now()
		time.Sleep(4 * time.Second) // the span measured, not synchronisation
		n, took := count()-before, time.Since(start)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		rate := float64(n) / took.Seconds()
		t.Logf("the holder ran %d heartbeats in %v: %.2f statements/s", n, took.Round(time.Millisecond), rate)
		if rate > 1.25 || n < 2 {
			t.Fatalf("%d heartbeats in %v, want about one a second", n, took)
		}
	})
}
