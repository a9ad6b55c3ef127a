// Package memory is an in-process lock backend: a Registry plays the part of
// the server, and every Locker made from it contends for names in it.
//
// It is meant for unit tests of code that takes a locker.Locker (swap it in
// for locker/postgres) and for programs whose contenders all live in one
// process. Revoke and Terminate take a held lock away, the way a real
// backend loses one, so that a test can drive the loss path.
package memory

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/onlyone-go/onlyone/locker"
)

var (
	_ locker.Locker    = (*Locker)(nil)
	_ locker.Errer     = (*Locker)(nil)
	_ locker.Fencer    = (*Locker)(nil)
	_ locker.Inspector = (*Locker)(nil)
)

// ErrRevoked is matched, along with locker.ErrLost, by the Err of a Locker
// whose hold was taken away by Revoke or Terminate.
var ErrRevoked = errors.New("memory: lock revoked")

// closed is the Lost channel of a Locker that holds nothing.
var closed = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// A Registry is a set of named locks: one Registry is one "server". Lockers
// made from the same Registry exclude one another by name; Lockers made from
// different Registries never meet. The zero Registry is not usable: call New.
type Registry struct {
	mu      sync.Mutex
	slots   map[string]*slot
	tokens  uint64 // the last fencing token handed out
	lockers uint64 // how many Lockers were made, for default identities
}

// slot is the state of one name.
type slot struct {
	holder *Locker       // nil when the name is free
	freed  chan struct{} // closed when the name becomes free, then replaced
}

// New returns an empty Registry.
func New() *Registry {
	return &Registry{slots: make(map[string]*slot)}
}

// slotLocked returns the slot for name, creating it. r.mu must be held.
func (r *Registry) slotLocked(name string) *slot {
	s := r.slots[name]
	if s == nil {
		s = &slot{freed: make(chan struct{})}
		r.slots[name] = s
	}
	return s
}

// freeLocked makes the name of s free and wakes its waiters. r.mu must be held.
func (s *slot) freeLocked() {
	s.holder = nil
	close(s.freed)
	s.freed = make(chan struct{})
}

// An Option configures a Locker made by Registry.Locker.
type Option func(*Locker)

// WithIdentity sets the identity a Locker's holds are known by (see
// locker.Inspector). The default is "memory-N", N counting the Lockers the
// Registry made.
func WithIdentity(id string) Option { return func(l *Locker) { l.identity = id } }

// Locker returns a new contender for name. It panics if name is empty, as
// an empty name is a programming error that would make unrelated code share
// a lock. A name that locker.CheckName refuses (only white space, a control
// character) makes Acquire fail with an error matching locker.ErrConfig.
func (r *Registry) Locker(name string, opts ...Option) *Locker {
	if name == "" {
		panic("memory: empty lock name")
	}
	r.mu.Lock()
	r.lockers++
	n := r.lockers
	r.mu.Unlock()
	l := &Locker{r: r, name: name, lost: closed, err: locker.ErrNotHeld, identity: fmt.Sprintf("memory-%d", n)}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Revoke takes the lock on name away from its holder the way a well-behaved
// backend loses one: the holder's Lost closes at once, and the name stays
// taken until that holder calls Release — the grace every real backend
// gives a holder to stop. It reports whether a hold was revoked.
func (r *Registry) Revoke(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[name]
	if s == nil || s.holder == nil {
		return false
	}
	return s.holder.loseLocked(ErrRevoked)
}

// Terminate takes the lock on name away and frees the name at once, the way
// an operator's pg_terminate_backend does: the holder's Lost closes, and
// another contender may be granted the lock before the old holder has
// stopped. It exists to test the window that fencing tokens close. It
// reports whether a hold was terminated.
func (r *Registry) Terminate(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[name]
	if s == nil || s.holder == nil {
		return false
	}
	s.holder.loseLocked(ErrRevoked)
	s.freeLocked()
	return true
}

// A Locker is one contender for a name in a Registry. It implements
// locker.Locker, locker.Errer, locker.Fencer and locker.Inspector. It has
// no grace: Revoke keeps the name taken until Release, but Terminate does
// not.
type Locker struct {
	r        *Registry
	name     string
	identity string

	op sync.Mutex // serialises Acquire and Release

	// Guarded by r.mu.
	lost  chan struct{}
	err   error
	token uint64
}

// Name returns the name l contends for.
func (l *Locker) Name() string { return l.name }

// Identity returns the identity l's holds are known by (WithIdentity).
func (l *Locker) Identity() string { return l.identity }

// Holder returns the identity of the Locker that holds l's name, "" when
// it is free. A holder whose hold was revoked but not yet released still
// holds the name. It never fails.
func (l *Locker) Holder(ctx context.Context) (string, error) {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	if s := l.r.slots[l.name]; s != nil && s.holder != nil {
		return s.holder.identity, nil
	}
	return "", nil
}

// Acquire blocks until l holds its name in the Registry, or ctx is done.
// It returns an error matching locker.ErrConfig at once for a name that
// locker.CheckName refuses.
func (l *Locker) Acquire(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	if err := locker.CheckName(l.name); err != nil {
		return fmt.Errorf("memory: acquire: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory: acquire %q: %w", l.name, err)
	}
	for {
		l.r.mu.Lock()
		s := l.r.slotLocked(l.name)
		if s.holder == l {
			if l.err == nil {
				l.r.mu.Unlock()
				return locker.ErrHeld
			}
			// A revoked hold not yet released: acquiring again means
			// the caller has stopped acting on it.
			s.freeLocked()
		}
		if s.holder == nil {
			s.holder = l
			l.lost = make(chan struct{})
			l.err = nil
			l.r.tokens++
			l.token = l.r.tokens
			l.r.mu.Unlock()
			return nil
		}
		freed := s.freed
		l.r.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return fmt.Errorf("memory: acquire %q: %w", l.name, ctx.Err())
		}
	}
}

// Lost returns a channel that is closed when l does not hold its name.
func (l *Locker) Lost() <-chan struct{} {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	return l.lost
}

// Err returns nil while l holds its name, locker.ErrNotHeld before the first
// Acquire and after Release, and an error matching locker.ErrLost and
// ErrRevoked after Revoke or Terminate.
func (l *Locker) Err() error {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	return l.err
}

// Token returns the fencing token of l's current hold: one more than the
// last token the Registry handed out, for any name. It returns false when l
// does not hold its name (before Acquire, after Release or loss).
func (l *Locker) Token() (uint64, bool) {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	if l.err != nil {
		return 0, false
	}
	return l.token, true
}

// Release gives the name up. It never fails.
func (l *Locker) Release(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	if s := l.r.slots[l.name]; s != nil && s.holder == l {
		s.freeLocked()
	}
	if l.err == nil {
		// A live hold: end it. A lost one keeps its error, so that Err
		// still says why it ended.
		close(l.lost)
		l.err = locker.ErrNotHeld
	}
	return nil
}

// loseLocked ends l's hold with cause, keeping its slot. It reports whether
// a hold was open. l.r.mu must be held.
func (l *Locker) loseLocked(cause error) bool {
	if l.err != nil {
		return false
	}
	l.err = &lostError{name: l.name, cause: cause}
	close(l.lost)
	return true
}

// lostError is the Err of a Locker whose hold was taken away.
type lostError struct {
	name  string
	cause error
}

func (e *lostError) Error() string {
	return fmt.Sprintf("memory: lock %q lost: %v", e.name, e.cause)
}

func (e *lostError) Is(target error) bool { return target == locker.ErrLost }

func (e *lostError) Unwrap() error { return e.cause }
