// Package locker defines the contract between a lock backend and the code
// that acts only while it holds the lock.
//
// A Locker is one contender for a named lock shared by every process that
// uses the same backend. The contract is small on purpose: Acquire blocks
// until the lock is held, Lost tells the holder when it must stop acting as
// the holder, and Release gives the lock up. Package supervise builds on it;
// packages locker/postgres and locker/memory implement it; package
// locker/lockertest checks that an implementation keeps it.
//
// Optional capabilities are small interfaces of their own (Errer, Graceful,
// Fencer, Voucher, Inspector), read through the helpers Err, Grace, Token,
// VouchedUntil and Holder, the way io.Copy looks for io.WriterTo.
package locker

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode"
)

// A Locker is one contender for a lock that is shared, by name, by every
// process that uses the same backend. At most one Locker holds it at a time.
//
// Lost and the optional Err and Grace methods may be called from any
// goroutine at any time. Acquire and Release are meant to be called by one
// goroutine, in turn; an implementation serialises calls that overlap, so a
// Release made while an Acquire blocks waits for that Acquire to return
// (cancel its context to stop it).
type Locker interface {
	// Acquire blocks until the lock is held, ctx is done, or the backend
	// fails. It returns nil only when the lock is held. When it returns an
	// error the lock is not held: a cancelled Acquire never leaves a lock
	// behind. If ctx is done before Acquire starts waiting, Acquire returns
	// an error that matches ctx.Err() with errors.Is, even when the lock is
	// free. An error caused by ctx matches ctx.Err().
	//
	// Acquire on a Locker that already holds the lock returns ErrHeld and
	// leaves the hold as it was.
	Acquire(ctx context.Context) error

	// Lost returns a channel that is closed when this Locker does not hold
	// the lock: before the first Acquire, after Release, and the moment a
	// held lock is lost or can no longer be vouched for. Each successful
	// Acquire starts a new hold with a new, open channel; successive calls
	// to Lost during one hold return the same channel. Closed means: stop
	// acting as the holder.
	//
	// Lost is for use in select statements:
	//
	//	// Work runs one step at a time for as long as l holds its lock.
	//	func Work(ctx context.Context, l locker.Locker, step func(context.Context) error) error {
	//		if err := l.Acquire(ctx); err != nil {
	//			return err
	//		}
	//		defer l.Release(context.Background())
	//		lost := l.Lost()
	//		for {
	//			select {
	//			case <-lost:
	//				return locker.Err(l)
	//			case <-ctx.Done():
	//				return ctx.Err()
	//			case <-time.After(time.Second):
	//				if err := step(ctx); err != nil {
	//					return err
	//				}
	//			}
	//		}
	//	}
	//
	// A backend closes Lost before the lock can be granted to anyone else,
	// and reports through Grace how long before.
	Lost() <-chan struct{}

	// Release gives the lock up and closes Lost if it was open. When it
	// returns, this Locker does not hold the lock, even if it returns an
	// error: a backend that cannot unlock cleanly destroys its session
	// instead. Release on a Locker that does not hold the lock, or whose
	// hold was lost, returns nil. The next Acquire starts a new hold.
	Release(ctx context.Context) error
}

// Errer is implemented by a Locker that can tell why its last hold ended.
type Errer interface {
	// Err returns nil while the lock is held. Otherwise it returns a non-nil
	// error that says why not: ErrNotHeld before the first Acquire and after
	// Release, an error matching ErrLost after the hold was lost. Once Lost
	// is closed, successive calls return the same error until the next
	// Acquire.
	Err() error
}

// Err returns l.Err() if l implements Errer. Otherwise it returns nil
// while l.Lost() is open and ErrNotHeld once it is closed.
func Err(l Locker) error {
	if e, ok := l.(Errer); ok {
		return e.Err()
	}
	select {
	case <-l.Lost():
		return ErrNotHeld
	default:
		return nil
	}
}

// Graceful is implemented by a Locker whose backend guarantees a grace
// period: after Lost closes, nobody else is granted the lock for at least
// Grace(), so a holder that stops within the grace never overlaps the next
// one.
type Graceful interface {
	Grace() time.Duration
}

// Grace reports the grace period of l, and whether l reports one.
// A Locker without one gives no guarantee after Lost closes.
func Grace(l Locker) (time.Duration, bool) {
	if g, ok := l.(Graceful); ok {
		return g.Grace(), true
	}
	return 0, false
}

// Fencer is implemented by a Locker whose holds carry fencing tokens.
//
// A fencing token lets the resource the holder writes to reject a holder
// that no longer holds the lock but does not know it yet — a process that
// was paused past its lease, or whose session an operator terminated. The
// holder sends its token with every write; the resource remembers the
// largest token it has seen and refuses writes with a smaller one (package
// fence does this for a PostgreSQL table).
type Fencer interface {
	// Token returns the current hold's token and true while the lock is
	// held, and 0 and false otherwise. Each hold's token is strictly
	// greater than the token of every earlier hold of the same lock, and
	// of every hold of any lock of the same backend that had ended before
	// this one was granted.
	Token() (uint64, bool)
}

// Token returns l's fencing token, if l is a Fencer that holds its lock.
func Token(l Locker) (uint64, bool) {
	if f, ok := l.(Fencer); ok {
		return f.Token()
	}
	return 0, false
}

// Voucher is implemented by a Locker whose backend vouches for a hold only
// for a bounded time after each confirmation (a heartbeat, a lease renewal).
// Whoever must not outlive the hold — a watchdog around a child process, a
// health check — can use the moment to arm a deadline of its own.
type Voucher interface {
	// VouchedUntil returns the moment at which Lost will close unless the
	// backend confirms the hold again before then. It returns the zero
	// time when the lock is not held. While the hold lasts, successive
	// calls never return an earlier time.
	VouchedUntil() time.Time
}

// VouchedUntil returns l.VouchedUntil() and true if l is a Voucher, and the
// zero time and false otherwise.
func VouchedUntil(l Locker) (time.Time, bool) {
	if v, ok := l.(Voucher); ok {
		return v.VouchedUntil(), true
	}
	return time.Time{}, false
}

// Inspector is implemented by a Locker whose backend can tell who holds
// its lock, so that a contender that waits can say whom it waits for.
type Inspector interface {
	// Identity returns the identity this Locker's holds are known by, as
	// Holder reports it to other contenders.
	Identity() string

	// Holder returns the identity of the current holder of the lock, ""
	// when nobody holds it. It may ask the backend (a query, a network
	// round trip): call it when the answer is needed, not in a loop. The
	// answer may be stale by the time it returns.
	Holder(ctx context.Context) (string, error)
}

// Holder returns l.Holder(ctx) and true if l is an Inspector, and "",
// false and nil otherwise.
func Holder(ctx context.Context, l Locker) (holder string, ok bool, err error) {
	if i, ok := l.(Inspector); ok {
		h, err := i.Holder(ctx)
		return h, true, err
	}
	return "", false, nil
}

// Identity returns l.Identity() and true if l is an Inspector, and ""
// and false otherwise.
func Identity(l Locker) (string, bool) {
	if i, ok := l.(Inspector); ok {
		return i.Identity(), true
	}
	return "", false
}

// CheckName returns an error matching ErrConfig for a lock name that is
// surely a mistake: empty, only white space, or with a control character
// (a stray newline from a file or an environment variable). Backends call
// it before they use a name; names are compared byte for byte, so "job"
// and "job\n" would be two different locks.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty lock name", ErrConfig)
	case strings.TrimFunc(name, unicode.IsSpace) == "":
		return fmt.Errorf("%w: lock name %q is only white space", ErrConfig, name)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: lock name %q has a control character", ErrConfig, name)
	}
	return nil
}
