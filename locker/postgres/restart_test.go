package postgres_test

import (
	"context"
	"database/sql"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// restartSettings are short settings that keep the inequalities of the
// defaults: the child needs most of Grace to stop, and SessionTimeout is
// LossTimeout + Grace + MinMargin.
var restartSettings = []postgres.Option{
	postgres.WithHeartbeatInterval(200 * time.Millisecond),
	postgres.WithLossTimeout(600 * time.Millisecond),
	postgres.WithGrace(time.Second),
	postgres.WithSessionTimeout(2600 * time.Millisecond),
	postgres.WithWaitChunk(500 * time.Millisecond),
}

// childStop is how long the replicas' child takes to stop once asked:
// most of the Grace.
var childStop = 800 * time.Millisecond

// restartAtDefaults switches TestRestartNoOverlap to the library's
// defaults (Grace 5s, SessionTimeout 10s) and a child that needs 2s to
// stop, as in production: ONLYONE_RESTART_DEFAULTS=1 (a few minutes, so
// not in make test).
func restartAtDefaults() {
	if os.Getenv("ONLYONE_RESTART_DEFAULTS") == "1" {
		restartSettings, childStop = nil, 2*time.Second
	}
}

// A ledger records when the replicas' children ran, and every overlap.
type ledger struct {
	mu       sync.Mutex
	running  int
	overlaps int
	starts   []time.Time
	stops    []time.Time
	started  chan struct{} // a child started (buffered)
}

func (g *ledger) child(ctx context.Context) error {
	g.mu.Lock()
	g.running++
	if g.running > 1 {
		g.overlaps++
	}
	g.starts = append(g.starts, time.Now())
	g.mu.Unlock()
	select {
	case g.started <- struct{}{}:
	default:
	}
	<-ctx.Done()
	time.Sleep(childStop) // the child's own work of stopping, not synchronisation
	g.mu.Lock()
	g.running--
	g.stops = append(g.stops, time.Now())
	g.mu.Unlock()
	return ctx.Err()
}

// since returns the times ts as durations from t0.
func since(t0 time.Time, ts []time.Time) []time.Duration {
	d := make([]time.Duration, len(ts))
	for i, t := range ts {
		d[i] = t.Sub(t0).Round(time.Millisecond)
	}
	return d
}

// lastStart returns the time the last child started.
func (g *ledger) lastStart() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.starts) == 0 {
		return time.Time{}
	}
	return g.starts[len(g.starts)-1]
}

// TestRestartNoOverlap runs two supervise.Run replicas, whose child needs
// most of the Grace to stop, through a server restart (immediate and
// fast) and a crash-reset (one backend SIGKILLed), with both drivers: the
// new leader's child may start only after the old one stopped, and
// someone leads again within 40s. Every lock vanishes with the restart;
// without the restart quarantine the other replica is granted the lock
// at once, while the old child is still stopping.
func TestRestartNoOverlap(t *testing.T) {
	restartAtDefaults()
	srv := ownServer(t)
	faults := []struct {
		name  string
		fault func(t *testing.T)
	}{
		{"immediate", func(t *testing.T) { restart(t, srv, true) }},
		{"fast", func(t *testing.T) { restart(t, srv, false) }},
		{"crash-reset", func(t *testing.T) { crashReset(t, srv) }},
	}
	for _, d := range drivers {
		for _, f := range faults {
			t.Run(d+"/"+f.name, func(t *testing.T) {
				g := &ledger{started: make(chan struct{}, 1)}
				ctx, cancel := context.WithCancel(context.Background())
				name := uniqueName(t)
				var wg sync.WaitGroup
				for i := 0; i < 2; i++ {
					db := open(t, d, srv.URL)
					l, err := postgres.New(db, name, restartSettings...)
					if err != nil {
						t.Fatal(err)
					}
					s := &supervise.Supervisor{MaxRestarts: 1000, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
					wg.Add(1)
					go func() {
						defer wg.Done()
						_ = s.Run(ctx, l, g.child)
					}()
				}
				defer func() { cancel(); wg.Wait() }()
				select {
				case <-g.started:
				case <-time.After(40 * time.Second):
					t.Fatal("nobody led within 40s")
				}
				faulted := time.Now()
				f.fault(t)
				deadline := time.After(40 * time.Second)
				for !g.lastStart().After(faulted) {
					select {
					case <-g.started:
					case <-deadline:
						t.Fatal("nobody led again within 40s of the fault")
					}
				}
				cancel()
				wg.Wait()
				g.mu.Lock()
				defer g.mu.Unlock()
				t.Logf("%s: a child started again %v after the fault; overlaps %d", f.name, g.starts[len(g.starts)-1].Sub(faulted).Round(time.Millisecond), g.overlaps)
				if g.overlaps != 0 {
					t.Fatalf("%d overlaps: a child started while another still ran; from the fault, starts %v, stops %v",
						g.overlaps, since(faulted, g.starts), since(faulted, g.stops))
				}
			})
		}
	}
}

// restart restarts srv, immediately (as a crash would) or fast.
func restart(t *testing.T, srv *pglocal.Server, immediate bool) {
	t.Helper()
	if err := srv.Restart(immediate); err != nil {
		t.Fatal(err)
	}
}

// crashReset SIGKILLs one backend of srv: the postmaster then ends every
// session and re-initialises shared memory (a crash-reset), without a
// restart.
func crashReset(t *testing.T, srv *pglocal.Server) {
	t.Helper()
	db, err := sql.Open("pgx", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pid int
	var reset time.Time
	if err := db.QueryRow("SELECT pg_backend_pid(), stats_reset FROM pg_stat_bgwriter").Scan(&pid, &reset); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The server discards its statistics after the crash recovery.
	eventually(t, 30*time.Second, "the server is reset and accepts queries again", func() bool {
		var now time.Time
		return db.QueryRow("SELECT stats_reset FROM pg_stat_bgwriter").Scan(&now) == nil && now.After(reset)
	})
}

// TestQuarantine checks the bound itself:
// after a restart, a crash-reset and a promotion, an Acquire on the
// server returns no earlier than SessionTimeout after the fault began.
func TestQuarantine(t *testing.T) {
	srv := ownServer(t)
	ctx := context.Background()
	check := func(t *testing.T, url, driver string, since time.Time) {
		t.Helper()
		l := newLocker(t, open(t, driver, url), uniqueName(t), restartSettings...)
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		took := time.Since(since)
		t.Logf("Acquire returned %v after the fault began (SessionTimeout %v)", took.Round(time.Millisecond), l.SessionTimeout())
		if took < l.SessionTimeout() {
			t.Fatalf("Acquire returned %v after the fault began, before SessionTimeout (%v)", took, l.SessionTimeout())
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range drivers {
		t.Run(d+"/restart", func(t *testing.T) {
			since := time.Now()
			restart(t, srv, true)
			check(t, srv.URL, d, since)
		})
		t.Run(d+"/crash-reset", func(t *testing.T) {
			since := time.Now()
			crashReset(t, srv)
			check(t, srv.URL, d, since)
		})
	}
	t.Run("promotion", func(t *testing.T) {
		sb, err := srv.StartStandby()
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Stop()
		db := open(t, "pgx", sb.URL)
		since := time.Now()
		if _, err := db.Exec("SELECT pg_promote(true)"); err != nil {
			t.Fatal(err)
		}
		for _, d := range drivers {
			check(t, sb.URL, d, since)
		}
		// A standby promoted long enough ago is not held back.
		l := newLocker(t, db, uniqueName(t), restartSettings...)
		start := time.Now()
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > l.SessionTimeout()/2 {
			t.Fatalf("Acquire on a server promoted %v ago took %v", start.Sub(since), took)
		}
	})
}
