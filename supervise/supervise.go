// Package supervise runs a function only while a lock is held.
//
// The child — func(ctx context.Context) error — learns that it leads by
// being called, and that it must stop by its ctx, which is cancelled the
// moment the lock's Lost channel closes or the caller's ctx ends. The
// supervisor waits for the child (up to ShutdownTimeout) before it
// releases the lock, so the next holder never starts while this child
// runs — provided ShutdownTimeout fits within the backend's grace, which
// Run checks. A child that does not stop in time after the lock was lost
// may now run twice: by default the process is terminated, because a
// goroutine cannot be killed and a process can.
//
// Run returns only when every goroutine it started has ended.
//
// A supervisor is never silent about a failure: without a Logger its
// warnings go to slog.Default(), and Run returns the cause when its
// context ends while acquisitions fail (see Supervisor.Run). Its state is
// visible from outside the process through StatusHandler (200 on the
// leader, 429 elsewhere, as JSON) and LivenessHandler (see Check).
package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// RestartPolicy says when a child that returned on its own is started
// again. The names are OTP's.
type RestartPolicy int

const (
	// Permanent restarts the child whenever it returns. The default.
	Permanent RestartPolicy = iota
	// Transient restarts the child when it returns an error or panics;
	// Run returns nil when the child returns nil.
	Transient
	// Temporary never restarts the child: Run returns what it returned,
	// or an error matching locker.ErrLost if it was stopped by a loss.
	Temporary
)

func (p RestartPolicy) String() string {
	switch p {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case Temporary:
		return "temporary"
	}
	return fmt.Sprintf("RestartPolicy(%d)", int(p))
}

// StuckPolicy says what happens when the child does not return within
// ShutdownTimeout of being told to stop.
type StuckPolicy int

const (
	// Terminate logs the stuck child and exits the process with
	// StuckExitCode, which ends the child and frees the lock. The default.
	Terminate StuckPolicy = iota
	// LogOnly logs the stuck child, releases the lock and waits for the
	// child to return before going on. After a loss, the work may then run
	// twice: choose it only if that is acceptable.
	LogOnly
)

// StuckExitCode is the exit status of a process terminated by the
// Terminate policy (EX_SOFTWARE).
const StuckExitCode = 70

// Defaults of a zero Supervisor.
const (
	DefaultShutdownTimeout = 5 * time.Second
	DefaultMaxRestarts     = 3
	DefaultRestartPeriod   = 5 * time.Second
	DefaultMinBackoff      = 100 * time.Millisecond
	DefaultMaxBackoff      = 10 * time.Second
	DefaultReleaseTimeout  = 5 * time.Second
)

// RepeatedFailureLog is how often an acquisition failure that goes on
// unchanged is logged again at Warn level (see Supervisor.Logger).
const RepeatedFailureLog = 5 * time.Minute

// ErrTooManyRestarts is matched by the error Run returns when the child
// was restarted more than MaxRestarts times within RestartPeriod.
var ErrTooManyRestarts = errors.New("supervise: too many restarts")

// ErrStuck is matched by the error Run returns, under LogOnly, after a
// child that did not stop within ShutdownTimeout finally returned.
var ErrStuck = errors.New("supervise: child did not stop within ShutdownTimeout")

// A PanicError is the error of a child that panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("supervise: child panicked: %v", e.Value) }

// A Supervisor runs a child only while a Locker is held. A zero Supervisor
// is valid and uses these defaults:
//
//   - ShutdownTimeout: 5s, or the Locker's grace if that is shorter
//   - Restart: Permanent
//   - MaxRestarts, RestartPeriod: 3 restarts in 5s, then Run gives up
//   - MinBackoff, MaxBackoff: 100ms doubling up to 10s, jittered, between
//     failed acquisitions and between restarts
//   - Stuck: Terminate
//   - ReleaseTimeout: 5s
//   - OnEvent: none
//   - Logger: none; warnings and errors then go to slog.Default()
//
// A Supervisor runs one Run at a time; Status may be called at any time.
type Supervisor struct {
	ShutdownTimeout time.Duration
	Restart         RestartPolicy
	MaxRestarts     int
	RestartPeriod   time.Duration
	MinBackoff      time.Duration
	MaxBackoff      time.Duration
	Stuck           StuckPolicy
	ReleaseTimeout  time.Duration

	// OnEvent, if set, is called for every transition, from Run's
	// goroutine, in order. It must not block.
	OnEvent func(Event)

	// Logger, if set, receives the same transitions as log records. A
	// failed acquisition is logged at Warn the first time, whenever the
	// error changes, and every RepeatedFailureLog while it goes on; the
	// retries in between at Debug. Without a Logger, the records at Warn
	// and above (failed acquisitions so throttled, a lost lock, a child's
	// error, a stuck child) go to slog.Default(): a supervisor is never
	// silent about a failure. Set slog.New(slog.DiscardHandler) to
	// silence it.
	Logger *slog.Logger

	// For tests (see export_test.go).
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
	exit  func(code int)

	// Run's own, for the throttling of failure logs.
	loggedFailure string
	loggedAt      time.Time

	mu       sync.Mutex
	status   Status
	locker   locker.Locker // the Locker of the current Run, for Check
	shutdown time.Duration // the effective ShutdownTimeout of the current Run
}

// Run runs child with l under a zero Supervisor: see Supervisor.Run.
func Run(ctx context.Context, l locker.Locker, child func(ctx context.Context) error) error {
	return new(Supervisor).Run(ctx, l, child)
}

// settings are the Supervisor's fields with defaults applied.
type settings struct {
	shutdown, period, minBackoff, maxBackoff, release time.Duration
	maxRestarts                                       int
}

func (s *Supervisor) settings(l locker.Locker) (settings, error) {
	c := settings{
		shutdown: s.ShutdownTimeout, period: s.RestartPeriod, maxRestarts: s.MaxRestarts,
		minBackoff: s.MinBackoff, maxBackoff: s.MaxBackoff, release: s.ReleaseTimeout,
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"ShutdownTimeout", c.shutdown}, {"RestartPeriod", c.period}, {"MinBackoff", c.minBackoff}, {"MaxBackoff", c.maxBackoff}, {"ReleaseTimeout", c.release}} {
		if f.v < 0 {
			return c, fmt.Errorf("supervise: %w: %s is %v, want zero (the default) or more", locker.ErrConfig, f.name, f.v)
		}
	}
	if c.maxRestarts < 0 {
		return c, fmt.Errorf("supervise: %w: MaxRestarts is %d, want zero (the default) or more", locker.ErrConfig, c.maxRestarts)
	}
	if s.Restart < Permanent || s.Restart > Temporary {
		return c, fmt.Errorf("supervise: %w: unknown Restart policy %d", locker.ErrConfig, int(s.Restart))
	}
	if s.Stuck < Terminate || s.Stuck > LogOnly {
		return c, fmt.Errorf("supervise: %w: unknown Stuck policy %d", locker.ErrConfig, int(s.Stuck))
	}
	grace, hasGrace := locker.Grace(l)
	switch {
	case c.shutdown == 0 && hasGrace && grace < DefaultShutdownTimeout:
		c.shutdown = grace
	case c.shutdown == 0:
		c.shutdown = DefaultShutdownTimeout
	case hasGrace && c.shutdown > grace:
		return c, fmt.Errorf("supervise: %w: ShutdownTimeout (%v) is longer than the locker's grace (%v): after a loss the next holder could start while this child still runs",
			locker.ErrConfig, c.shutdown, grace)
	}
	if c.maxRestarts == 0 {
		c.maxRestarts = DefaultMaxRestarts
	}
	if c.period == 0 {
		c.period = DefaultRestartPeriod
	}
	if c.minBackoff == 0 {
		c.minBackoff = DefaultMinBackoff
	}
	if c.maxBackoff == 0 {
		c.maxBackoff = DefaultMaxBackoff
	}
	if c.maxBackoff < c.minBackoff {
		return c, fmt.Errorf("supervise: %w: MaxBackoff (%v) is shorter than MinBackoff (%v)", locker.ErrConfig, c.maxBackoff, c.minBackoff)
	}
	if c.release == 0 {
		c.release = DefaultReleaseTimeout
	}
	return c, nil
}

// Run acquires l, runs child while it is held, and releases l when the
// child has stopped; it does so again as the restart policy says.
//
// Failed acquisitions are retried with backoff: a database that is down,
// a standby not yet promoted, a password being rotated are normal, not
// fatal. An error matching locker.ErrConfig is not retried, as retrying
// cannot cure it: Run returns it at once. Backends report that way what
// only a change of configuration can fix (for locker/postgres: a database
// or a role that does not exist, a missing privilege, a transaction-mode
// pooler — but not a wrong password, which may be a password being
// rotated, nor a standby, which may be promoted).
//
// Run returns:
//   - nil when ctx ends after the child has stopped, or while Run waits for
//     a lock that another process holds;
//   - an error matching ctx.Err() and wrapping the last failure, when ctx
//     ends after acquisitions failed and before the lock was held again
//     (so a wrong address or password is never silent);
//   - an error matching ctx.Err() under Temporary when ctx ends before the
//     child ran: a one-shot job that did not run is not a success;
//   - the child's result under Temporary (and Transient, for nil), or an
//     error matching locker.ErrLost if a loss stopped it;
//   - an error matching ErrTooManyRestarts when the restart intensity is
//     exceeded;
//   - an error matching locker.ErrConfig for settings that cannot work,
//     here or in the backend.
//
// It returns only when the child's goroutine has ended.
func (s *Supervisor) Run(ctx context.Context, l locker.Locker, child func(ctx context.Context) error) error {
	if l == nil || child == nil {
		return fmt.Errorf("supervise: %w: nil locker or child", locker.ErrConfig)
	}
	c, err := s.settings(l)
	if err != nil {
		return err
	}
	s.begin(l, c)
	defer s.transition(Stopped, nil)

	var (
		failures int         // consecutive failed acquisitions
		last     error       // the last of them
		restarts []time.Time // within the restart period
	)
	for {
		stopAsking := s.wait(ctx, l)
		err := l.Acquire(ctx)
		stopAsking()
		if err != nil {
			if ctx.Err() != nil {
				if last == nil && !errors.Is(err, ctx.Err()) {
					failures, last = 1, err
				}
				return s.waitEnded(ctx, failures, last)
			}
			if errors.Is(err, locker.ErrConfig) {
				s.emitAt(Event{Kind: EventAcquireFailed, Err: err}, slog.LevelError, "failures", failures+1)
				return fmt.Errorf("supervise: giving up: %w", err)
			}
			failures++
			last = err
			d := backoff(c.minBackoff, c.maxBackoff, failures)
			s.emitAt(Event{Kind: EventAcquireFailed, Err: err, Delay: d}, s.failureLevel(failures, err), "failures", failures)
			if !s.sleep(ctx, d) {
				return s.waitEnded(ctx, failures, last)
			}
			continue
		}
		failures, last = 0, nil
		s.transition(Leading, nil)
		s.emit(Event{Kind: EventAcquired})

		end, childErr := s.lead(ctx, l, c, child)

		rctx, cancel := context.WithTimeout(context.Background(), c.release)
		rerr := l.Release(rctx)
		cancel()
		s.emit(Event{Kind: EventReleased, Err: rerr})

		switch {
		case end == endStuck:
			return fmt.Errorf("%w (%v)", ErrStuck, childErr)
		case end == endShutdown:
			return nil
		case end == endLost && s.Restart == Temporary:
			// Never restarted, not even when the lock comes back: a
			// one-shot job stopped half-way is for its owner to rerun.
			return fmt.Errorf("supervise: child stopped: %w", lostErr(l))
		case end == endLost:
			continue // not the child's fault: wait for the lock again
		}
		// The child returned on its own.
		if s.Restart == Temporary || (s.Restart == Transient && childErr == nil) {
			return childErr
		}
		now := s.clock()
		restarts = append(restarts, now)
		for len(restarts) > 0 && now.Sub(restarts[0]) > c.period {
			restarts = restarts[1:]
		}
		if len(restarts) > c.maxRestarts {
			return fmt.Errorf("%w: %d in %v; last error: %v", ErrTooManyRestarts, len(restarts), c.period, childErr)
		}
		s.setStatus(func(st *Status) { st.Restarts++ })
		d := backoff(c.minBackoff, c.maxBackoff, len(restarts))
		s.emit(Event{Kind: EventRestarting, Err: childErr, Delay: d})
		if !s.sleep(ctx, d) {
			return nil
		}
	}
}

// waitEnded is what Run returns when ctx ended before the lock was held:
// failures acquisitions failed in a row, the last with last.
func (s *Supervisor) waitEnded(ctx context.Context, failures int, last error) error {
	switch {
	case last != nil:
		return fmt.Errorf("supervise: %w before the lock was held; %d acquisitions failed in a row, the last with: %w", ctx.Err(), failures, last)
	case s.Restart == Temporary:
		return fmt.Errorf("supervise: %w before the lock was held: the child never ran", ctx.Err())
	}
	return nil
}

// holderTimeout bounds each question a supervisor asks about the holder:
// the answer is for people, and must not delay the wait for long.
const holderTimeout = 2 * time.Second

// holderRecheck is how long after a wait began a supervisor asks again
// who holds the lock, if the first answer was "nobody": two replicas that
// start together both find the lock free, and the one that loses the race
// should still be able to say who won.
const holderRecheck = time.Second

// wait enters the Waiting state. On entering it, it asks the backend who
// holds the lock, if it can tell (locker.Inspector), for Status and
// EventWaiting; if nobody did, it asks once more after holderRecheck,
// for Status only, in a goroutine that the returned func stops and waits
// for. Retries after a failure stay in the state and ask nothing.
func (s *Supervisor) wait(ctx context.Context, l locker.Locker) (stop func()) {
	stop = func() {}
	if s.Status().State == Waiting {
		return stop
	}
	s.transition(Waiting, nil)
	holder, ok := s.askHolder(ctx, l)
	s.setStatus(func(st *Status) { st.Holder = holder })
	s.emit(Event{Kind: EventWaiting, Holder: holder})
	if !ok || holder != "" {
		return stop
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-s.timer(holderRecheck):
		case <-actx.Done():
			return
		}
		if h, _ := s.askHolder(actx, l); h != "" && actx.Err() == nil {
			s.setStatus(func(st *Status) {
				if st.State == Waiting {
					st.Holder = h
				}
			})
		}
	}()
	return func() { cancel(); <-done }
}

// askHolder asks l who holds its lock, once; ok is false when l cannot
// tell.
func (s *Supervisor) askHolder(ctx context.Context, l locker.Locker) (holder string, ok bool) {
	hctx, cancel := context.WithTimeout(ctx, holderTimeout)
	defer cancel()
	holder, ok, err := locker.Holder(hctx, l)
	if err != nil {
		s.log(slog.LevelDebug, "supervise: cannot tell who holds the lock", "err", err)
	}
	return holder, ok
}

// failureLevel is the level at which the failures-th failed acquisition
// in a row, err, is logged: Warn for the first, for each change of error
// and then every RepeatedFailureLog while the same error goes on; Debug
// for the others, so that a database down for an hour is a few lines, not
// one per retry.
func (s *Supervisor) failureLevel(failures int, err error) slog.Level {
	now := s.clock()
	msg := err.Error()
	if failures == 1 || msg != s.loggedFailure || now.Sub(s.loggedAt) >= RepeatedFailureLog {
		s.loggedFailure, s.loggedAt = msg, now
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// end says why a hold ended.
type end int

const (
	endExited   end = iota // the child returned on its own
	endLost                // the lock was lost and the child stopped
	endShutdown            // ctx ended and the child stopped
	endStuck               // the child did not stop in time (LogOnly)
)

// lead runs child while l is held and returns when it has ended.
func (s *Supervisor) lead(ctx context.Context, l locker.Locker, c settings, child func(context.Context) error) (end, error) {
	tctx, tokenRead := withToken(ctx, l)
	defer tokenRead()
	cctx, cancel := context.WithCancel(tctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(cctx, child) }()

	var why end
	select {
	case err := <-done:
		if ctx.Err() == nil {
			s.emit(Event{Kind: EventChildExited, Err: err})
			return endExited, err
		}
		// The child's ctx derives from ctx, so it may see a shutdown and
		// return before this select does: that is a shutdown, not a child
		// that returned on its own to be restarted.
		s.transition(Stopping, nil)
		s.emit(Event{Kind: EventStopping})
		s.emit(Event{Kind: EventChildExited, Err: err})
		return endShutdown, err
	case <-l.Lost():
		why = endLost
		s.emit(Event{Kind: EventLost, Err: locker.Err(l)})
	case <-ctx.Done():
		why = endShutdown
	}
	s.transition(Stopping, nil)
	s.emit(Event{Kind: EventStopping})
	cancel()
	select {
	case err := <-done:
		s.emit(Event{Kind: EventChildExited, Err: err})
		return why, err
	case <-s.timer(c.shutdown):
	}
	select {
	case err := <-done: // returned as the timeout fired: not stuck
		s.emit(Event{Kind: EventChildExited, Err: err})
		return why, err
	default:
	}
	s.emit(Event{Kind: EventStuck})
	if s.Stuck == Terminate {
		s.log(slog.LevelError, "supervise: child did not stop within ShutdownTimeout; terminating the process so that it cannot run twice",
			"shutdown_timeout", c.shutdown, "exit_code", StuckExitCode)
		s.terminate(StuckExitCode)
	}
	// LogOnly: release now, as the lock is lost or must be given up, and
	// wait for the child, however long it takes.
	rctx, rcancel := context.WithTimeout(context.Background(), c.release)
	_ = l.Release(rctx)
	rcancel()
	err := <-done
	s.emit(Event{Kind: EventChildExited, Err: err})
	return endStuck, err
}

// lostErr is why l's hold ended, matching locker.ErrLost even for a
// Locker that cannot say why.
func lostErr(l locker.Locker) error {
	if err := locker.Err(l); errors.Is(err, locker.ErrLost) {
		return err
	}
	return locker.ErrLost
}

// call runs child, turning a panic into a *PanicError.
func call(ctx context.Context, child func(context.Context) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return child(ctx)
}

// backoff returns the n-th delay (n ≥ 1): min doubled n-1 times, capped at
// max, with jitter in its upper half.
func backoff(min, max time.Duration, n int) time.Duration {
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

func (s *Supervisor) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

func (s *Supervisor) timer(d time.Duration) <-chan time.Time {
	if s.after != nil {
		return s.after(d)
	}
	return time.After(d)
}

// sleep waits d or until ctx ends; it reports whether d passed.
func (s *Supervisor) sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-s.timer(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Supervisor) terminate(code int) {
	if s.exit != nil {
		s.exit(code)
		return
	}
	os.Exit(code)
}

// log writes a record to Logger. Without a Logger, records at Warn and
// above go to slog.Default(), so that failures are never silent.
func (s *Supervisor) log(level slog.Level, msg string, args ...any) {
	l := s.Logger
	if l == nil {
		if level < slog.LevelWarn {
			return
		}
		l = slog.Default()
	}
	l.Log(context.Background(), level, msg, args...)
}
