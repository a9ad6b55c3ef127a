// Package gocronlock runs gocron v2 jobs on one node of a cluster, with
// onlyone locks.
//
// It offers gocron's two distributed modes:
//
//   - Elector (gocron.WithDistributedElector): one node leads, and only
//     its scheduler runs jobs. Leadership is an onlyone Locker held by a
//     supervisor (package supervise), so it is taken over in milliseconds
//     when the leader dies, and IsLeader answers nil only while the lock
//     is held and vouched for.
//   - Locker (gocron.WithDistributedLocker): every node's scheduler fires,
//     and each tick runs on the first node to claim it; the others find
//     the tick claimed and skip it. Claims are recorded by package once,
//     under a PostgreSQL lock, by the server's clock.
//
// # Stopping a job when leadership is lost
//
// gocron asks the Elector only before a run; it has no way to stop a run
// once started, and cancelling the job's context (gocron.WithContext)
// stops all its future runs too. So the Elector offers Guard: a task
// wrapped by it gets a context that is cancelled the moment the lock is
// lost, and the supervisor waits for guarded runs to return (up to its
// ShutdownTimeout, within the Locker's grace) before it releases the
// lock — the same promise as for any supervised child: the next leader's
// runs never overlap this one's, and a run that does not stop in time
// terminates the process. Unguarded tasks are not waited for.
package gocronlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-co-op/gocron/v2"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/supervise"
)

// ErrNotLeader is matched by the error IsLeader returns on a node that
// does not lead, and by the error of a guarded task started there.
var ErrNotLeader = errors.New("gocronlock: not the leader")

// An Elector is a gocron.Elector backed by an onlyone Locker: the node
// whose Elector holds the lock leads. Run campaigns; IsLeader is what
// gocron asks before each run. Its methods may be called from any
// goroutine.
type Elector struct {
	l locker.Locker
	s *supervise.Supervisor

	mu      sync.Mutex
	leading context.Context // the hold's context while leading; nil otherwise
	runs    sync.WaitGroup  // guarded runs under the current hold
	now     func() time.Time
}

var _ gocron.Elector = (*Elector)(nil)

// NewElector returns an Elector that campaigns with l under the
// supervisor s (nil means a zero Supervisor: its defaults). Set s's
// ShutdownTimeout to bound how long a guarded run may take to stop, and
// its OnEvent to follow leadership (see adapter/metrics). The Elector
// replaces nothing in s but runs its child; use one Supervisor per Elector.
func NewElector(l locker.Locker, s *supervise.Supervisor) *Elector {
	if s == nil {
		s = new(supervise.Supervisor)
	}
	return &Elector{l: l, s: s, now: time.Now}
}

// Run campaigns for leadership until ctx ends: it acquires the lock,
// leads while it is held, and acquires it again after a loss, retrying
// with backoff while the backend fails. It returns what Supervisor.Run
// returns, once every guarded run has returned.
func (e *Elector) Run(ctx context.Context) error {
	return e.s.Run(ctx, e.l, e.lead)
}

// lead is the supervised child: the node leads until ctx ends (the lock
// was lost or Run's ctx ended), then waits for guarded runs to stop.
func (e *Elector) lead(ctx context.Context) error {
	e.mu.Lock()
	e.leading = ctx
	e.mu.Unlock()
	<-ctx.Done()
	e.mu.Lock()
	e.leading = nil // no run starts from now on
	e.mu.Unlock()
	e.runs.Wait()
	return nil
}

// IsLeader returns nil while this node's lock is held and vouched for by
// its backend (see locker.VouchedUntil), and an error matching
// ErrNotLeader otherwise.
func (e *Elector) IsLeader(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, err := e.hold()
	return err
}

// hold returns the current hold's context, if the node leads. e.mu is
// held.
func (e *Elector) hold() (context.Context, error) {
	if e.leading == nil || e.leading.Err() != nil {
		return nil, ErrNotLeader
	}
	select {
	case <-e.l.Lost():
		return nil, fmt.Errorf("%w: the lock was lost", ErrNotLeader)
	default:
	}
	if until, ok := locker.VouchedUntil(e.l); ok && !e.now().Before(until) {
		return nil, fmt.Errorf("%w: the backend no longer vouches for the lock", ErrNotLeader)
	}
	return e.leading, nil
}

// Guard wraps a gocron task so that it runs only on the leader and stops
// when leadership ends: its ctx is gocron's job context, also cancelled
// the moment the lock is lost, and the supervisor waits for it before it
// releases the lock. On a node that does not lead, the task does not run
// and the wrapper returns an error matching ErrNotLeader.
//
//	s.NewJob(gocron.DurationJob(time.Minute), gocron.NewTask(el.Guard(func(ctx context.Context) error {
//		return billing.Run(ctx) // stops when ctx is done
//	})))
func (e *Elector) Guard(task func(ctx context.Context) error) func(ctx context.Context) error {
	return func(jobCtx context.Context) error {
		e.mu.Lock()
		hold, err := e.hold()
		if err == nil {
			e.runs.Add(1) // under mu: lead cannot have started waiting
		}
		e.mu.Unlock()
		if err != nil {
			return err
		}
		defer e.runs.Done()
		ctx, cancel := context.WithCancel(jobCtx)
		defer cancel()
		stop := context.AfterFunc(hold, cancel)
		defer stop()
		return task(ctx)
	}
}
