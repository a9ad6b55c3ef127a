package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/onlyone-go/onlyone/locker"
)

var (
	_ locker.Locker   = (*Locker)(nil)
	_ locker.Errer    = (*Locker)(nil)
	_ locker.Graceful = (*Locker)(nil)
	_ locker.Fencer   = (*Locker)(nil)
	_ locker.Voucher  = (*Locker)(nil)
)

// closed is the Lost channel of a Locker that never held the lock.
var closed = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// A Locker is one contender for a PostgreSQL session advisory lock. It
// implements locker.Locker, locker.Errer, locker.Graceful and
// locker.Fencer and locker.Voucher. Make one with New or NewKey.
type Locker struct {
	db    *sql.DB
	key   int64
	label string // the name, or "key N", for messages
	cfg   config

	op   sync.Mutex // serialises Acquire and Release
	hold *hold      // the hold to release, lost or not; guarded by op

	mu  sync.Mutex // guards cur
	cur *hold      // the last hold, released or not; nil before the first

	warnUpOnce sync.Once // the role cannot read when the server started

	sess *run // set by a Session on its presence Locker: the run its holds carry
}

// New returns a Locker for the lock called name in the database that db
// reaches, with the defaults listed under WithHeartbeatInterval and its
// sibling options. Every process that uses the same name on the same
// database contends for the same lock. The name's key is Key(name).
//
// New does not connect: Acquire does. It returns an error matching
// locker.ErrConfig for a nil db, a name that is empty, all white space or
// holds control characters (a mistake, most likely), or settings that
// cannot work.
func New(db *sql.DB, name string, opts ...Option) (*Locker, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return newLocker(db, Key(name), fmt.Sprintf("%q", name), opts)
}

// checkName refuses names that are most likely mistakes: empty, all white
// space, or with control characters. (Names are hashed: this is not about
// safety.)
func checkName(name string) error {
	switch {
	case name == "":
		return configError("empty lock name")
	case strings.TrimSpace(name) == "":
		return configError("lock name %q is all white space", name)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return configError("lock name %q holds control characters", name)
	}
	return nil
}

// NewKey is New for a lock identified by a raw advisory-lock key, for
// users who already number their locks.
func NewKey(db *sql.DB, key int64, opts ...Option) (*Locker, error) {
	return newLocker(db, key, fmt.Sprintf("key %d", key), opts)
}

func newLocker(db *sql.DB, key int64, label string, opts []Option) (*Locker, error) {
	if db == nil {
		return nil, configError("nil *sql.DB")
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Locker{db: db, key: key, label: label, cfg: cfg}, nil
}

// Key returns the advisory-lock key l contends for.
func (l *Locker) Key() int64 { return l.key }

// Identity returns the application_name l's sessions carry.
func (l *Locker) Identity() string { return l.cfg.identity }

// Grace returns the time after Lost closes during which the server grants
// the lock to nobody else, provided the holder's process keeps running: the
// Grace setting.
func (l *Locker) Grace() time.Duration { return l.cfg.grace }

// SessionTimeout returns the server-side bound set on l's sessions.
func (l *Locker) SessionTimeout() time.Duration { return l.cfg.sessionTimeout }

// Token returns the fencing token of the current hold: the transaction id
// taken once the lock was granted, and flushed to WAL. Transaction ids
// only grow, across sessions, processes and server crashes, so each hold's
// token is larger than every earlier one on this server. A failover to an
// asynchronous replica can lose the newest ids and hand them out again.
//
// The flush follows the grant, so that Acquire returns without waiting
// for the disk: Token waits for it (a millisecond or so) the first time it
// is called in a hold, and at most until the hold is lost. Package
// supervise starts the child without waiting for it; supervise.Token
// does. Token returns false when l does not hold the lock.
func (l *Locker) Token() (uint64, bool) {
	l.mu.Lock()
	h := l.cur
	l.mu.Unlock()
	if h == nil {
		return 0, false
	}
	select {
	case <-h.durable:
	case <-h.lost:
	}
	// Past the loss deadline the hold vouches for nothing, even where the
	// loss timer has not run yet (this process was paused).
	if !time.Now().Before(h.vouchedUntil()) {
		return 0, false
	}
	return h.token, true
}

// Lost returns a channel that is closed when l does not hold the lock.
func (l *Locker) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return closed
	}
	return l.cur.lost
}

// Err returns nil while l holds the lock, locker.ErrNotHeld before the
// first Acquire and after Release, and an error matching locker.ErrLost
// that says why once a hold was lost.
func (l *Locker) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return locker.ErrNotHeld
	}
	return l.cur.endErr()
}

// Acquire blocks until l holds the lock, ctx is done, or the database
// fails. It pins one connection of the pool, sets up its session, waits in
// chunks of WaitChunk, and returns nil on the server's own answer, from
// the pinned session's backend, that the lock is granted there (pg_locks
// confirms it before Token gives the hold's token out). On any error or
// cancellation the connection is destroyed, never returned to the pool,
// so no lock is left behind. It returns an error matching
// locker.ErrStandby on a standby server.
//
// A grant counts only once the server has been a writable primary for
// SessionTimeout: a restart, crash-reset or promotion frees every lock at
// once, and a holder from before it may need LossTimeout to notice and
// Grace to stop. Until then Acquire keeps the lock and its heartbeat, and
// returns once a heartbeat sent after that moment succeeded (see the
// package doc for what the server shows an unprivileged role).
//
// Acquire after a hold was lost, without Release, first releases that hold.
func (l *Locker) Acquire(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	if h := l.hold; h != nil {
		if !h.isLost() {
			return locker.ErrHeld
		}
		if err := h.release(ctx); err != nil {
			return l.errorf("acquire: releasing the lost hold: %w", err)
		}
		l.hold = nil
	}
	if err := ctx.Err(); err != nil {
		return l.errorf("acquire: %w", err)
	}
	h, ready, err := l.acquire(ctx)
	if err != nil {
		return classify(err) // errors that retrying cannot cure match locker.ErrConfig (classify.go)
	}
	go h.heartbeat()
	if err := l.quarantine(ctx, h, ready); err != nil {
		// Unlocks, or ends the session; bounded once ctx is done.
		_ = h.release(ctx)
		return err
	}
	l.hold = h
	l.mu.Lock()
	l.cur = h
	l.mu.Unlock()
	l.cfg.logger.Info("lock acquired", "lock", l.label, "key", l.key, "pid", h.pid)
	return nil
}

// quarantine waits until a heartbeat of h sent at or after ready has
// succeeded: the session, and so the server, lived on past ready. A hold
// lost meanwhile — the server restarted again — fails the Acquire.
func (l *Locker) quarantine(ctx context.Context, h *hold, ready time.Time) error {
	if !time.Now().Before(ready) {
		return nil
	}
	l.cfg.logger.Info("lock granted on a server that started, reset or was promoted less than SessionTimeout ago; waiting until any holder from before has stopped",
		"lock", l.label, "key", l.key, "pid", h.pid, "wait", time.Until(ready).Round(time.Millisecond))
	for h.lastSent().Before(ready) {
		select {
		case <-h.beats:
		case <-h.lost:
			return l.errorf("acquire: waiting out the restart quarantine: %w", h.endErr())
		case <-ctx.Done():
			return l.errorf("acquire: waiting out the restart quarantine: %w", ctx.Err())
		}
	}
	return nil
}

// VouchedUntil returns the moment at which Lost closes unless a heartbeat
// succeeds before then: the send time of the last good heartbeat plus
// LossTimeout. It returns the zero time when l does not hold the lock.
// While a hold lasts it never moves backwards.
func (l *Locker) VouchedUntil() time.Time {
	l.mu.Lock()
	h := l.cur
	l.mu.Unlock()
	if h == nil {
		return time.Time{}
	}
	return h.vouchedUntil()
}

// keepSpare readies, once the lock is held, an idle connection of the pool
// for Release to interrupt the heartbeat through: it runs the statement
// Release will run, for no backend, which opens a connection where none
// is idle and warms its caches (on a new session the statement costs
// about 3ms, on a warm one a tenth of that). It does nothing where the
// pool has no room for one more.
func (l *Locker) keepSpare() {
	if l.lastConn() {
		return
	}
	_ = l.signal(backend{}, "pg_cancel_backend")
}

// lastConn reports whether every connection the pool allows is in use, so
// that a statement through it would wait for one.
func (l *Locker) lastConn() bool {
	st := l.db.Stats()
	return st.MaxOpenConnections > 0 && st.InUse >= st.MaxOpenConnections
}

// Release gives the lock up: it closes Lost, interrupts the heartbeat in
// flight (pg_cancel_backend through the pool, which borrows a connection
// for a moment; where the pool allows no more, the heartbeat ends by
// itself within HeartbeatInterval), unlocks, and destroys the pinned
// connection (never returned to the pool). When it returns nil, the server has unlocked or
// is ending the session. It unlocks even when ctx is already done — the
// usual defer after a signal — within a time of its own
// (HeartbeatInterval + 1s).
//
// If the connection is stuck in the driver past that timeout and ctx has
// ended (lib/pq on a silent network ignores deadlines), Release returns an
// error that matches ctx.Err(). Lost is closed all the same; the
// connection is destroyed as soon as the driver gives it back, and the
// server frees the lock within SessionTimeout of the session's last
// statement in any case. Calling Release again waits for that clean-up.
func (l *Locker) Release(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	h := l.hold
	if h == nil {
		return nil
	}
	if err := h.release(ctx); err != nil {
		return l.errorf("release: %w", err)
	}
	l.hold = nil
	l.cfg.logger.Info("lock released", "lock", l.label, "key", l.key, "pid", h.pid)
	return nil
}

// errorf returns an error prefixed with the package and the lock.
func (l *Locker) errorf(format string, args ...any) error {
	return fmt.Errorf("postgres: lock %s: "+format, append([]any{l.label}, args...)...)
}

// A LostError is what Err reports after a held lock was lost. It matches
// locker.ErrLost.
type LostError struct {
	Lock  string // the name, quoted, or "key N"
	PID   int    // the backend pid of the lost session
	Cause error  // why: a failed heartbeat, a timeout, a changed backend
}

func (e *LostError) Error() string {
	return fmt.Sprintf("postgres: lock %s lost (backend pid %d): %v", e.Lock, e.PID, e.Cause)
}

// Is reports whether target is locker.ErrLost.
func (e *LostError) Is(target error) bool { return target == locker.ErrLost }

// Unwrap returns the cause.
func (e *LostError) Unwrap() error { return e.Cause }

// ErrHeartbeatTimeout is the cause of a loss when no heartbeat succeeded
// within LossTimeout.
var ErrHeartbeatTimeout = errors.New("no heartbeat succeeded within LossTimeout")

// ErrBackendChanged is the cause of a loss, or of a failed Acquire, when the
// session's backend pid changed: a transaction-mode pooler (PgBouncer)
// moved the session, and with it the lock. Connect directly or through a
// session-mode pool.
var ErrBackendChanged = errors.New("backend pid changed: the connection goes through a transaction-mode pooler; session locks need a direct or session-mode connection")

// sqlState returns the SQLSTATE of a driver error, or "". Both lib/pq and
// pgx errors have a SQLState method.
func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// isLockTimeout reports whether err is the server's lock_timeout error
// (SQLSTATE 55P03, lock_not_available).
func isLockTimeout(err error) bool { return sqlState(err) == "55P03" }

// ms formats d for a PostgreSQL timeout setting.
func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }
