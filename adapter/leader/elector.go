// Package leader runs scheduled work on one node of a cluster, for the
// scheduler adapters (adapter/gocronlock for gocron v2, adapter/cronlock
// for robfig/cron v3) and for any scheduler of one's own. It needs only
// packages locker, supervise, locker/postgres and once: no scheduler.
//
// Two ways, for two needs:
//
//   - An Elector: one node leads, and only its scheduler runs jobs.
//     Leadership is an onlyone Locker held by a supervisor (package
//     supervise), so it is taken over in milliseconds when the leader
//     dies, and IsLeader answers nil only while the lock is held and
//     vouched for (locker.VouchedUntil).
//   - A Ticks claimer: every node's scheduler fires, and each tick runs on
//     the first node to claim it; the others find the tick claimed and
//     skip it. Claims are recorded by package once, under a PostgreSQL
//     lock, by the server's clock.
//
// # Stopping a run when leadership is lost
//
// A scheduler asks "do I lead?" only before a run. Elector.Guard wraps a
// task so that its context is cancelled the moment the lock is lost, and
// the supervisor waits for guarded runs to return (up to its
// ShutdownTimeout, within the Locker's grace) before it releases the
// lock: the same promise as for any supervised child — the next leader's
// runs never overlap this one's, and a run that does not stop in time
// terminates the process (supervise.Terminate). Unguarded tasks are
// neither cancelled nor waited for.
package leader

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/supervise"
)

// ErrNotLeader is matched by the error IsLeader returns on a node that
// does not lead, and by the error of a guarded task started there.
var ErrNotLeader = errors.New("leader: not the leader")

// An Elector elects a leader with an onlyone Locker: the node whose
// Elector holds the lock leads. Run campaigns; IsLeader is what a
// scheduler asks before each run (it is gocron's Elector interface). Its
// methods may be called from any goroutine.
type Elector struct {
	l locker.Locker
	s *supervise.Supervisor

	mu      sync.Mutex
	leading context.Context // the hold's context while leading; nil otherwise
	elected chan struct{}   // closed when the node next starts leading
	runs    sync.WaitGroup  // guarded runs under the current hold
	now     func() time.Time
}

// NewElector returns an Elector that campaigns with l under the
// supervisor s (nil means a zero Supervisor: its defaults). Set s's
// ShutdownTimeout to bound how long a guarded run may take to stop, and
// its OnEvent to follow leadership (see adapter/metrics). Use one
// Supervisor per Elector.
func NewElector(l locker.Locker, s *supervise.Supervisor) *Elector {
	if s == nil {
		s = new(supervise.Supervisor)
	}
	return &Elector{l: l, s: s, now: time.Now, elected: make(chan struct{})}
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
	close(e.elected)
	e.mu.Unlock()
	<-ctx.Done()
	e.mu.Lock()
	e.leading = nil // no run starts from now on
	e.elected = make(chan struct{})
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

// WaitLeader blocks until this node leads (IsLeader would return nil) or
// ctx is done, and returns nil or ctx's error.
func (e *Elector) WaitLeader(ctx context.Context) error {
	for {
		e.mu.Lock()
		_, err := e.hold()
		elected := e.elected
		e.mu.Unlock()
		if err == nil {
			return nil
		}
		select {
		case <-elected:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
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

// Guard wraps a task so that it runs only on the leader and stops
// when leadership ends: its ctx is the one the wrapper is called with,
// also cancelled
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
