package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// TestReleaseWithDoneContext releases with a context that is already
// cancelled — the usual defer after a signal — on a reachable server: the
// lock is unlocked and free when Release returns, and Release returns nil.
func TestReleaseWithDoneContext(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		l := e.locker(t, uniqueName(t), fast...)
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release with a done context = %v, want nil", err)
		}
		// The server ends the session moments after the driver closed it.
		eventually(t, time.Second, "the lock is free", func() bool { return len(e.holders(t, l.Key())) == 0 })
	})
}

// TestLostHoldFreesPoolSlot: with a pool of one connection, the holder's
// session terminated and no Release, an application query on the same
// *sql.DB succeeds within 3s of Lost closing.
func TestLostHoldFreesPoolSlot(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		db := open(t, e.driver, e.srv.URL)
		db.SetMaxOpenConns(1)
		l := newLocker(t, db, uniqueName(t), fast...)
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.terminate(t, l.Key())
		<-l.Lost()
		lost := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var one int
		if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("an application query %v after Lost closed: %v", time.Since(lost), err)
		}
		t.Logf("the application's query ran %v after Lost closed", time.Since(lost).Round(time.Microsecond))
	})
}

// TestAcquireHonoursContextOnSilentNetwork makes the network silent while
// a waiter waits, then cancels it: Acquire must return soon, with both
// drivers (lib/pq ignores deadlines on a silent network).
func TestAcquireHonoursContextOnSilentNetwork(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		proxy, err := faultproxy.Start(e.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer proxy.Close()
		name := uniqueName(t)
		holder := e.locker(t, name, fast...)
		if err := holder.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		waiter := newLocker(t, open(t, e.driver, e.srv.URLVia(proxy.Addr())), name, fast...)
		for _, phase := range []string{"waiting", "setting up"} {
			ctx, cancel := context.WithCancel(context.Background())
			res := make(chan error, 1)
			if phase == "waiting" {
				go func() { res <- waiter.Acquire(ctx) }()
				eventually(t, 10*time.Second, "the waiter waits", func() bool { return e.waiting(t, holder.Key()) })
				proxy.Drop()
			} else {
				proxy.Drop() // the connection and its setup meet a silent network
				go func() { res <- waiter.Acquire(ctx) }()
				time.Sleep(200 * time.Millisecond) // let it reach the network (not synchronisation)
			}
			cancelled := time.Now()
			cancel()
			select {
			case err := <-res:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("%s: Acquire = %v, want context.Canceled", phase, err)
				}
				t.Logf("%s: Acquire returned %v after the cancel", phase, time.Since(cancelled).Round(time.Millisecond))
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: Acquire did not return within 5s of the cancel on a silent network", phase)
			}
			proxy.Restore()
		}
		proxy.Close() // the detached driver calls fail and end
		if err := holder.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// TestVouchedUntil: zero before the first hold, no more than LossTimeout
// ahead while held, never backwards, zero after Release.
func TestVouchedUntil(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		l := e.locker(t, uniqueName(t), fast...)
		if v, ok := locker.VouchedUntil(l); !ok || !v.IsZero() {
			t.Fatalf("before Acquire: VouchedUntil = %v, %v; want the zero time, true", v, ok)
		}
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		var last time.Time
		for i := 0; i < 10; i++ { // over two heartbeat intervals
			now := time.Now()
			v := l.VouchedUntil()
			if v.Before(last) {
				t.Fatalf("VouchedUntil went back from %v to %v", last, v)
			}
			if v.Before(now) || v.After(now.Add(600*time.Millisecond)) {
				t.Fatalf("VouchedUntil %v from now, want within LossTimeout (600ms)", v.Sub(now))
			}
			last = v
			time.Sleep(40 * time.Millisecond) // sampling, not synchronisation
		}
		if !last.After(time.Now().Add(-time.Second)) {
			t.Fatal("VouchedUntil did not move")
		}
		if err := l.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		if v := l.VouchedUntil(); !v.IsZero() {
			t.Fatalf("after Release: VouchedUntil = %v, want the zero time", v)
		}
	})
}

// TestNames refuses names that are most likely mistakes.
func TestNames(t *testing.T) {
	db := open(t, "pgx", "postgres://nobody@127.0.0.1:1/none") // New does not connect
	for _, name := range []string{"", " ", "\t\n", "job\x00", "job\nname", "\x7f"} {
		if _, err := postgres.New(db, name); !errors.Is(err, locker.ErrConfig) {
			t.Errorf("New(%q) = %v, want ErrConfig", name, err)
		}
	}
	for _, name := range []string{"job", "nightly report", "é"} {
		if _, err := postgres.New(db, name); err != nil {
			t.Errorf("New(%q) = %v", name, err)
		}
	}
}

// TestWarnsOnLastConnection: a Locker that pins the last connection its
// pool allows says so, naming the fix.
func TestWarnsOnLastConnection(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		for _, max := range []int{2, 1} {
			db := open(t, e.driver, e.srv.URL)
			db.SetMaxOpenConns(max)
			logs := &logSink{}
			l := newLocker(t, db, uniqueName(t), append(fast, postgres.WithLogger(logs.logger()))...)
			if err := l.Acquire(context.Background()); err != nil {
				t.Fatal(err)
			}
			warned := logs.contains("pinned the last connection") && logs.contains("SetMaxOpenConns") && logs.contains("a *sql.DB of their own")
			if warned != (max == 1) {
				t.Errorf("SetMaxOpenConns(%d): warned %v:\n%s", max, warned, logs)
			}
			if err := l.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	})
}
