package supervise_test

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// TestPostgresTakeover runs two supervisors on a real PostgreSQL lock. A
// shut-down leader stops its child before the other's child starts; when
// an operator terminates a leader's session, its child is told to stop.
// (pg_terminate_backend frees the lock at once, before the old holder
// hears of it: that window is documented, and closed by fencing tokens.)
func TestPostgresTakeover(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string, db *sql.DB) {
		name := "supervise-takeover-" + driver + "-" + time.Now().Format("150405.000000")
		var active, maxActive atomic.Int32
		evs := []*events{newEvents(), newEvents()}
		ctxs := make([]context.Context, 2)
		cancels := make([]context.CancelFunc, 2)
		res := make([]chan error, 2)
		for i := range evs {
			ctxs[i], cancels[i] = context.WithCancel(context.Background())
			defer cancels[i]()
			res[i] = make(chan error, 1)
			l, err := postgres.New(db, name, postgres.WithHeartbeatInterval(100*time.Millisecond),
				postgres.WithLossTimeout(500*time.Millisecond), postgres.WithGrace(500*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			s := &supervise.Supervisor{OnEvent: evs[i].hook}
			go func() {
				res[i] <- s.Run(ctxs[i], l, func(ctx context.Context) error {
					if n := active.Add(1); n > maxActive.Load() {
						maxActive.Store(n)
					}
					defer active.Add(-1)
					<-ctx.Done()
					return nil
				})
			}()
		}
		first := waitEither(t, evs, supervise.EventAcquired, 1)
		second := 1 - first

		// A deploy: the leader shuts down; the other takes over.
		cancels[first]()
		if err := <-res[first]; err != nil {
			t.Fatal(err)
		}
		evs[second].waitFor(t, supervise.EventAcquired, 1)
		if m := maxActive.Load(); m != 1 {
			t.Fatalf("%d children ran at once during a graceful hand-over", m)
		}

		// An operator ends the new leader's session.
		if _, err := db.Exec("SELECT pg_terminate_backend($1)", holderPID(t, db, name)); err != nil {
			t.Fatal(err)
		}
		lost := evs[second].waitFor(t, supervise.EventLost, 1)
		if !errors.Is(lost.Err, locker.ErrLost) {
			t.Fatalf("lost: %v", lost.Err)
		}
		evs[second].waitFor(t, supervise.EventAcquired, 2) // alone now: it leads again
		cancels[second]()
		if err := <-res[second]; err != nil {
			t.Fatal(err)
		}
		if h, err := postgres.WhoHolds(context.Background(), db, name); h != nil || err != nil {
			t.Fatalf("after both supervisors returned, WhoHolds = %+v, %v", h, err)
		}
	})
}

// forEachDriver runs f once per database/sql driver, as subtests, with a
// pool on the shared server.
func forEachDriver(t *testing.T, f func(t *testing.T, driver string, db *sql.DB)) {
	srv := pglocal.Shared(t)
	for _, driver := range []string{"pgx", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			db, err := sql.Open(driver, srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			f(t, driver, db)
		})
	}
}

// waitEither waits until one of evs has its n-th event of kind k, and
// returns which.
func waitEither(t *testing.T, evs []*events, k supervise.EventKind, n int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for i, ev := range evs {
			ev.mu.Lock()
			c := 0
			for _, e := range ev.all {
				if e.Kind == k {
					c++
				}
			}
			ev.mu.Unlock()
			if c >= n {
				return i
			}
		}
		select {
		case <-evs[0].wake:
		case <-evs[1].wake:
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("no %v event", k)
	return -1
}

func holderPID(t *testing.T, db *sql.DB, name string) int {
	t.Helper()
	h, err := postgres.WhoHolds(context.Background(), db, name)
	if err != nil || h == nil {
		t.Fatalf("WhoHolds = %v, %v", h, err)
	}
	return h.PID
}
