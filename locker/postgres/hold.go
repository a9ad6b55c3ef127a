package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// A hold is one acquisition: a pinned connection holding the lock, and the
// heartbeat goroutine that owns the connection until Release.
type hold struct {
	l     *Locker
	conn  *sql.Conn
	pid   int
	token uint64

	lost chan struct{} // closed by end, once
	stop chan struct{} // closed by release: the heartbeat must clean up
	done chan struct{} // closed when the heartbeat goroutine has ended

	releaseCtx context.Context // set before stop is closed
	stopOnce   sync.Once

	mu       sync.Mutex // guards deadline, err and timer
	deadline time.Time  // last good statement's send time + LossTimeout
	err      error      // why the hold ended; nil while it lasts
	timer    *time.Timer
}

// newHold starts a hold on conn, whose statement sent at verified showed
// the lock held.
func newHold(l *Locker, conn *sql.Conn, pid int, token uint64, verified time.Time) *hold {
	h := &hold{
		l:        l,
		conn:     conn,
		pid:      pid,
		token:    token,
		lost:     make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		deadline: verified.Add(l.cfg.loss),
	}
	// The loss timer does not wait for a heartbeat call to return: a
	// driver may ignore deadlines on a silent network. It is set under
	// h.mu, which its function takes, so that the function sees it.
	h.mu.Lock()
	h.timer = time.AfterFunc(time.Until(h.deadline), h.expire)
	h.mu.Unlock()
	return h
}

// expire is the loss timer's function.
func (h *hold) expire() {
	h.mu.Lock()
	if d := time.Until(h.deadline); d > 0 {
		// Extended since the timer was set: wait for the new deadline.
		h.timer.Reset(d)
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	h.end(&LostError{Lock: h.l.label, PID: h.pid, Cause: ErrHeartbeatTimeout})
}

// extend moves the deadline after a heartbeat sent at sent succeeded. A
// heartbeat that comes back after the deadline does not revive the hold.
func (h *hold) extend(sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil || time.Now().After(h.deadline) {
		return
	}
	h.deadline = sent.Add(h.l.cfg.loss)
	h.timer.Reset(time.Until(h.deadline))
}

// end ends the hold with err (a *LostError, or locker.ErrNotHeld for a
// release): Lost closes and Err reports err. Only the first call counts.
func (h *hold) end(err error) {
	h.mu.Lock()
	if h.err != nil {
		h.mu.Unlock()
		return
	}
	h.err = err
	h.timer.Stop()
	close(h.lost)
	h.mu.Unlock()
	if errors.Is(err, locker.ErrLost) {
		h.l.cfg.logger.Warn("lock lost", "lock", h.l.label, "key", h.l.key, "pid", h.pid, "err", err)
	}
}

// endErr returns why the hold ended, or nil while it lasts.
func (h *hold) endErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *hold) isLost() bool {
	select {
	case <-h.lost:
		return true
	default:
		return false
	}
}

// heartbeat checks the session every HeartbeatInterval until the hold ends,
// then waits for release to clean up. It owns h.conn.
func (h *hold) heartbeat() {
	defer close(h.done)
	defer h.cleanup()
	tick := time.NewTicker(h.l.cfg.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-h.lost:
			// No more statements: the server's idle_session_timeout
			// now runs, and frees the lock if Release never comes.
			<-h.stop
			return
		case <-tick.C:
		}
		if err := h.beat(); err != nil {
			h.end(&LostError{Lock: h.l.label, PID: h.pid, Cause: err})
		}
	}
}

// beat runs one heartbeat: a cheap statement that returns the backend pid.
func (h *hold) beat() error {
	sent := time.Now()
	h.mu.Lock()
	deadline := h.deadline
	h.mu.Unlock()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var pid int
	if err := h.conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if pid != h.pid {
		return fmt.Errorf("%w (pid %d, then %d)", ErrBackendChanged, h.pid, pid)
	}
	h.extend(sent)
	return nil
}

// cleanup destroys the connection. A hold ended by Release, not lost,
// unlocks first: that makes the hand-over synchronous (when Release
// returns, a waiter can already have the lock). A lost session may not
// answer at all, so it is destroyed at once.
func (h *hold) cleanup() {
	if errors.Is(h.endErr(), locker.ErrNotHeld) {
		ctx, cancel := context.WithTimeout(h.releaseCtx, unlockTimeout)
		_, _ = h.conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", h.l.key)
		cancel()
	}
	destroy(h.conn)
}

// release ends the hold (closing Lost before anything else), stops the
// heartbeat and waits for it to unlock and destroy the connection.
func (h *hold) release(ctx context.Context) error {
	h.stopOnce.Do(func() {
		h.end(locker.ErrNotHeld)
		h.releaseCtx = ctx
		close(h.stop)
	})
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the connection is stuck in the driver; it is destroyed when the driver returns, and the server frees the lock within SessionTimeout: %w", ctx.Err())
	}
}
