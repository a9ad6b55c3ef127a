package postgres_test

import (
	"context"
	"sort"
	"testing"
	"time"
)

// TestGracefulHandover measures Release to the waiter's Acquire returning,
// at phases spread over the holder's heartbeat. Release interrupts the
// heartbeat in flight: without that, the hand-over would wait for the
// heartbeat statement to end, half a HeartbeatInterval on average.
func TestGracefulHandover(t *testing.T) {
	const trials = 20
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		// Two processes' pools; a 1s heartbeat.
		a, b := e.locker(t, name), newLocker(t, open(t, e.driver, e.srv.URL), name)
		if err := a.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		var took []time.Duration
		for i := 0; i < trials; i++ {
			res := acquireAsync(t, b)
			eventually(t, 10*time.Second, "the waiter waits", func() bool { return e.waiting(t, a.Key()) })
			// A phase within the holder's heartbeat (jitter, not
			// synchronisation).
			time.Sleep(time.Duration(i) * time.Second / trials)
			released := time.Now()
			if err := a.Release(ctx); err != nil {
				t.Fatal(err)
			}
			took = append(took, (<-res).Sub(released))
			a, b = b, a
		}
		t.Logf("graceful hand-over over %d trials: %s", trials, summary(took))
		if p50 := median(took); p50 > 100*time.Millisecond {
			t.Fatalf("hand-over p50 %v: Release waits for the heartbeat instead of interrupting it", p50)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
