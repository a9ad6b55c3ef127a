package leader_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// TestGuardStopsRunOnLoss: when the lock is lost, a guarded run's ctx is
// cancelled, IsLeader says no at once, new guarded runs do not start, and
// the lock is not released (nobody else can lead) until the run returned.
// (The memory backend keeps a revoked lock taken until its holder releases
// it, as real backends do for their grace.)
func TestGuardStopsRunOnLoss(t *testing.T) {
	reg := memory.New()
	leaderEvents := make(chan supervise.Event, 16)
	el := leader.NewElector(reg.Locker("guard"), &supervise.Supervisor{
		ShutdownTimeout: 10 * time.Second,
		Logger:          slog.New(slog.DiscardHandler),
		OnEvent:         func(e supervise.Event) { leaderEvents <- e },
	})
	ctx := runElector(t, el)
	waitEvent(t, leaderEvents, supervise.EventAcquired)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := el.WaitLeader(wctx); err != nil {
		t.Fatalf("WaitLeader = %v", err)
	}
	if err := el.IsLeader(ctx); err != nil {
		t.Fatalf("IsLeader = %v after WaitLeader", err)
	}

	started, stopped, finish := make(chan struct{}), make(chan struct{}), make(chan struct{})
	runDone := make(chan error, 1)
	go func() {
		runDone <- el.Guard(func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			close(stopped)
			<-finish // a run that takes a moment to wind down
			return nil
		})(context.Background())
	}()
	<-started
	reg.Revoke("guard")
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the guarded run's ctx was not cancelled after the loss")
	}
	if err := el.IsLeader(ctx); !errors.Is(err, leader.ErrNotLeader) {
		t.Fatalf("IsLeader after the loss = %v, want ErrNotLeader", err)
	}
	ran := false
	if err := el.Guard(func(context.Context) error { ran = true; return nil })(context.Background()); !errors.Is(err, leader.ErrNotLeader) || ran {
		t.Fatalf("a guarded run started after the loss: ran %v, err %v", ran, err)
	}
	other := reg.Locker("guard")
	tctx, tcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := other.Acquire(tctx)
	tcancel()
	if err == nil {
		t.Fatal("another node acquired the lock while the guarded run was still winding down")
	}
	close(finish)
	if err := <-runDone; err != nil {
		t.Fatalf("the guarded run returned %v", err)
	}
	// Only now does the supervisor release the lock (and, as it still
	// campaigns, wait for it again).
	waitEvent(t, leaderEvents, supervise.EventReleased)
}

func waitEvent(t *testing.T, ch <-chan supervise.Event, kind supervise.EventKind) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-ch:
			if e.Kind == kind {
				return
			}
		case <-timeout:
			t.Fatalf("no %v within 10s", kind)
		}
	}
}

// unvouched is a held lock whose backend no longer vouches for it: its
// VouchedUntil has passed, though Lost is still open (a heartbeat late).
type unvouched struct {
	*memory.Locker
	past atomic.Bool
}

func (u *unvouched) VouchedUntil() time.Time {
	if u.past.Load() {
		return time.Now().Add(-time.Millisecond)
	}
	return time.Now().Add(time.Hour)
}

// TestIsLeaderNeedsVouching: IsLeader says no once the backend's vouched-for
// moment has passed, even before Lost closes.
func TestIsLeaderNeedsVouching(t *testing.T) {
	l := &unvouched{Locker: memory.New().Locker("vouch")}
	el := leader.NewElector(l, &supervise.Supervisor{Logger: slog.New(slog.DiscardHandler)})
	ctx := runElector(t, el)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := el.WaitLeader(wctx); err != nil {
		t.Fatalf("WaitLeader = %v", err)
	}
	l.past.Store(true)
	if err := el.IsLeader(ctx); !errors.Is(err, leader.ErrNotLeader) {
		t.Fatalf("IsLeader with the hold no longer vouched for = %v, want ErrNotLeader", err)
	}
	select {
	case <-l.Lost():
		t.Fatal("Lost closed: the test wants the window before it does")
	default:
	}
}

// runElector runs el until the test ends, failing the test if Run then
// returns an error, and returns the ctx it runs under.
func runElector(t *testing.T, el *leader.Elector) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- el.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return ctx
}
