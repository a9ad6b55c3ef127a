package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// TestSessionRestartNoOverlap runs 2 Sessions × 20 names, each name under
// supervise.Run with a child that needs most of the Grace to stop,
// through an immediate restart and a crash-reset of the server, with both
// drivers: no name's child starts while another still runs, and every
// name runs again within 40s.
func TestSessionRestartNoOverlap(t *testing.T) {
	const names = 20
	srv := ownServer(t)
	faults := []struct {
		name  string
		fault func(t *testing.T)
	}{
		{"immediate", func(t *testing.T) { restart(t, srv, true) }},
		{"crash-reset", func(t *testing.T) { crashReset(t, srv) }},
	}
	for _, d := range drivers {
		for _, f := range faults {
			t.Run(d+"/"+f.name, func(t *testing.T) {
				ledgers := make([]*ledger, names)
				for i := range ledgers {
					ledgers[i] = &ledger{started: make(chan struct{}, 1)}
				}
				ctx, cancel := context.WithCancel(context.Background())
				prefix := uniqueName(t)
				var wg sync.WaitGroup
				for n := 0; n < 2; n++ {
					s := newSession(t, open(t, d, srv.URL), restartSettings...)
					for i := 0; i < names; i++ {
						l := sessionLocker(t, s, fmt.Sprintf("%s.%d", prefix, i))
						sup := &supervise.Supervisor{MaxRestarts: 1000, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
						wg.Add(1)
						go func() {
							defer wg.Done()
							_ = sup.Run(ctx, l, ledgers[i].child)
						}()
					}
				}
				defer func() { cancel(); wg.Wait() }()
				waitAll := func(after time.Time, what string) {
					t.Helper()
					deadline := time.After(40 * time.Second)
					for _, g := range ledgers {
						for !g.lastStart().After(after) {
							select {
							case <-g.started:
							case <-deadline:
								t.Fatalf("a name did not run %s within 40s", what)
							}
						}
					}
				}
				waitAll(time.Time{}, "at first")
				faulted := time.Now()
				f.fault(t)
				waitAll(faulted, "after the fault")
				took := time.Since(faulted)
				cancel()
				wg.Wait()
				overlaps := 0
				for _, g := range ledgers {
					g.mu.Lock()
					overlaps += g.overlaps
					g.mu.Unlock()
				}
				t.Logf("%s: every name ran again within %v of the fault; overlaps %d", f.name, took.Round(time.Millisecond), overlaps)
				if overlaps != 0 {
					t.Fatalf("%d overlaps: a child started while another still ran", overlaps)
				}
			})
		}
	}
}

var _ = postgres.Key

// TestSessionCloseUnderSupervisors closes a Session while supervisors run
// work on its names: every name's Lost closes, every child is stopped,
// and the supervisors' Releases after the Close do no harm.
func TestSessionCloseUnderSupervisors(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		const names = 5
		s, err := postgres.NewSession(e.db, quick...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		started := make(chan struct{}, names)
		stopped := make(chan struct{}, names)
		child := func(ctx context.Context) error {
			started <- struct{}{}
			<-ctx.Done()
			stopped <- struct{}{}
			return nil
		}
		prefix := uniqueName(t)
		var wg sync.WaitGroup
		for i := 0; i < names; i++ {
			l := sessionLocker(t, s, fmt.Sprintf("%s.%d", prefix, i))
			sup := &supervise.Supervisor{MaxRestarts: 1000, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = sup.Run(ctx, l, child)
			}()
		}
		defer func() { cancel(); wg.Wait() }()
		for i := 0; i < names; i++ {
			select {
			case <-started:
			case <-time.After(20 * time.Second):
				t.Fatalf("%d of %d children started", i, names)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < names; i++ {
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatalf("%d of %d children stopped after Close", i, names)
			}
		}
		cancel()
		wg.Wait()
	})
}
