package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// State is where a Supervisor is.
type State int

const (
	Idle     State = iota // Run has not been called
	Waiting               // waiting for the lock
	Leading               // holding the lock; the child runs
	Stopping              // the child was told to stop; waiting for it
	Stopped               // Run has returned
)

func (s State) String() string {
	switch s {
	case Idle:
		return "idle"
	case Waiting:
		return "waiting"
	case Leading:
		return "leading"
	case Stopping:
		return "stopping"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Status is a snapshot of a Supervisor.
type Status struct {
	State     State
	Since     time.Time // when State was entered
	Restarts  int       // restarts of the child since Run began
	LastError error     // the last error of an acquisition, the child or a release

	// Identity is the identity the Locker's holds are known by, when it
	// can tell (a locker.Inspector): for locker/postgres, WithIdentity.
	Identity string

	// Holder is who holds the lock, as far as this Supervisor knows: its
	// own Identity while Leading or Stopping; while Waiting, the holder
	// the backend reported when the wait began ("" when the lock was free
	// or the backend cannot tell) — or, if the lock was free then, a
	// second later. It is not refreshed during the wait.
	Holder string
}

// Status returns the Supervisor's current status.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Supervisor) setStatus(f func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.status)
}

// begin resets the status for a new Run of l with settings c.
func (s *Supervisor) begin(l locker.Locker, c settings) {
	id, _ := locker.Identity(l)
	s.loggedFailure, s.loggedAt = "", time.Time{}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = Status{Identity: id}
	s.locker, s.shutdown = l, c.shutdown
}

func (s *Supervisor) transition(to State, err error) {
	s.setStatus(func(st *Status) {
		if st.State != to {
			st.State, st.Since = to, s.clock()
			switch to {
			case Leading:
				st.Holder = st.Identity
			case Stopped:
				st.Holder = ""
			}
		}
		if err != nil {
			st.LastError = err
		}
	})
}

// EventKind says what happened.
type EventKind int

const (
	EventAcquireFailed EventKind = iota + 1 // Acquire failed (Err); retrying after Delay
	EventAcquired                           // the lock is held; the child starts
	EventLost                               // the lock was lost (Err says why); the child is told to stop
	EventStopping                           // the child is told to stop (loss or shutdown)
	EventStuck                              // the child did not stop within ShutdownTimeout
	EventChildExited                        // the child returned (Err is its result)
	EventReleased                           // the lock was released (Err from Release)
	EventRestarting                         // the child will be started again after Delay
	EventWaiting                            // waiting for the lock, held by Holder ("" if free or unknown)
)

func (k EventKind) String() string {
	switch k {
	case EventAcquireFailed:
		return "acquire-failed"
	case EventAcquired:
		return "acquired"
	case EventLost:
		return "lost"
	case EventStopping:
		return "stopping"
	case EventStuck:
		return "stuck"
	case EventChildExited:
		return "child-exited"
	case EventReleased:
		return "released"
	case EventRestarting:
		return "restarting"
	case EventWaiting:
		return "waiting"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// An Event is one transition of a Supervisor, passed to OnEvent.
type Event struct {
	Kind  EventKind
	Time  time.Time
	Err   error
	Delay time.Duration // for EventAcquireFailed and EventRestarting

	// Holder, for EventWaiting, is the identity of the lock's holder when
	// the wait began, if the Locker can tell (locker.Inspector); "" when
	// the lock was free or the Locker cannot tell.
	Holder string
}

// emit records e in the status, logs it at its level and passes it to
// OnEvent.
func (s *Supervisor) emit(e Event) { s.emitAt(e, e.level()) }

// emitAt is emit at the given level, with extra log attributes.
func (s *Supervisor) emitAt(e Event, level slog.Level, attrs ...any) {
	e.Time = s.clock()
	if e.Err != nil {
		s.setStatus(func(st *Status) { st.LastError = e.Err })
	}
	if e.Err != nil {
		attrs = append(attrs, "err", e.Err)
	}
	if e.Delay != 0 {
		attrs = append(attrs, "delay", e.Delay)
	}
	if e.Kind == EventWaiting && e.Holder != "" {
		attrs = append(attrs, "holder", e.Holder)
	}
	s.log(level, "supervise: "+e.Kind.String(), attrs...)
	if s.OnEvent != nil {
		s.OnEvent(e)
	}
}

// level is the level at which e is logged.
func (e Event) level() slog.Level {
	switch e.Kind {
	case EventLost:
		// A lock handed over on purpose (spread over nodes), or released
		// by its owner (a Session closed under the supervisor), is
		// routine.
		if errors.Is(e.Err, locker.ErrHandedOver) || errors.Is(e.Err, locker.ErrNotHeld) {
			return slog.LevelInfo
		}
		return slog.LevelError
	case EventStuck:
		return slog.LevelError
	case EventAcquireFailed:
		return slog.LevelWarn
	case EventChildExited, EventRestarting:
		// A child that returns its ctx's cancellation stopped as told.
		if e.Err != nil && !errors.Is(e.Err, context.Canceled) {
			return slog.LevelWarn
		}
	}
	return slog.LevelInfo
}
