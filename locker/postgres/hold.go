package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// A hold is one acquisition: a pinned connection holding the lock, and the
// heartbeat goroutine that owns the connection until the hold ends.
type hold struct {
	l       *Locker
	sess    *run // the Session run whose names this hold carries; nil for a plain Locker
	conn    *sql.Conn
	backend backend // pid and start of the session
	pid     int
	token   uint64 // set by flush, before durable closes

	lost    chan struct{} // closed by end, once
	durable chan struct{} // closed once the token is flushed to WAL
	stop    chan struct{} // closed by release: the heartbeat must clean up
	done    chan struct{} // closed when the heartbeat goroutine has ended
	beats   chan struct{} // a heartbeat succeeded (buffered, 1)

	stopOnce sync.Once

	mu       sync.Mutex // guards deadline, sent, err and timer
	deadline time.Time  // last good heartbeat's send time + LossTimeout
	sent     time.Time  // send time of the last good heartbeat (or the grant)
	err      error      // why the hold ended; nil while it lasts
	timer    *time.Timer
}

// newHold starts a hold on conn, whose lock was granted no later than
// granted.
func newHold(l *Locker, conn *sql.Conn, b backend, granted time.Time) *hold {
	h := &hold{
		l:        l,
		sess:     l.sess,
		conn:     conn,
		backend:  b,
		pid:      b.pid,
		lost:     make(chan struct{}),
		durable:  make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		beats:    make(chan struct{}, 1),
		deadline: granted.Add(l.cfg.loss),
		sent:     granted,
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
// heartbeat that comes back after the deadline does not revive the hold,
// and the deadline never moves backwards.
func (h *hold) extend(sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil || time.Now().After(h.deadline) || !sent.After(h.sent) {
		return
	}
	h.sent = sent
	h.deadline = sent.Add(h.l.cfg.loss)
	h.timer.Reset(time.Until(h.deadline))
	select {
	case h.beats <- struct{}{}:
	default:
	}
}

// vouchedUntil returns the loss deadline while the hold lasts, and the
// zero time once it has ended.
func (h *hold) vouchedUntil() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return time.Time{}
	}
	return h.deadline
}

// lastSent returns the send time of the last good heartbeat.
func (h *hold) lastSent() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent
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

// heartbeatSQL is the heartbeat: it waits on the server for $1 seconds and
// returns the backend pid. Keeping a statement in flight means that a
// session that ends — an operator's pg_terminate_backend, a restart, a
// crash-reset — is seen the moment its socket closes, not at the next
// heartbeat. Like any statement it holds a snapshot while it runs: no
// longer than the heartbeat interval, as a short query each second would.
const heartbeatSQL = `SELECT pg_catalog.pg_backend_pid() FROM pg_catalog.pg_sleep($1)`

// heartbeat runs heartbeats back to back until the hold ends; finish then
// cleans up. It owns h.conn.
func (h *hold) heartbeat() {
	defer close(h.done)
	err, dead := h.flush()
	// The spare connection for Release is readied beside the heartbeats,
	// so that a slow connect cannot delay the first of them, and after the
	// flush, which Token (and so a supervised child's start) waits for:
	// opening a session costs the server a process, and the machine's
	// cores are wanted on the takeover path at that moment.
	spared := make(chan struct{})
	go func(flushed bool) {
		defer close(spared)
		if flushed && h.sess == nil { // a Session interrupts its heartbeat from its own second connection
			h.l.keepSpare()
		}
	}(err == nil)
	defer func() { <-spared }()
	for err == nil {
		select {
		case <-h.lost:
			// Released, or lost by the timer while no statement was in
			// flight.
			h.finish()
			return
		default:
		}
		err, dead = h.beat()
	}
	// Release may have interrupted the statement (pg_cancel_backend): then
	// it has ended the hold already, and this end does nothing.
	h.end(&LostError{Lock: h.l.label, PID: h.pid, Cause: err})
	if dead {
		// The server ended the session: the lock is free already, and the
		// pool gets its slot back at once.
		destroy(h.conn)
		return
	}
	h.finish()
}

// finish cleans up after the hold ended while the session may still be
// alive: a released hold unlocks. A lost one stays silent — no statement,
// so the server's idle_session_timeout runs — until Release or Grace
// after the loss, whichever comes first, and only then destroys its
// connection. Destroying it at once would free the lock at once (the
// server sees the socket close within milliseconds), while the holder's
// work is still being stopped: the server must grant the lock to nobody
// for Grace after Lost closes.
func (h *hold) finish() {
	if errors.Is(h.endErr(), locker.ErrNotHeld) {
		<-h.stop // closed right after the hold ended by release
		h.cleanup()
		return
	}
	t := time.NewTimer(h.l.cfg.grace)
	defer t.Stop()
	select {
	case <-h.stop:
	case <-t.C:
	}
	destroy(h.conn)
}

// flushSQL is the hold's first statement, run after the grant, off the
// takeover path (Token waits for it). It verifies that it runs on the
// backend that took the lock, and that pg_locks shows the lock granted to
// that backend; takes the hold's fencing token — the id of its own
// transaction, assigned now that the lock is held, so greater than any
// earlier holder's — and makes that id durable: the transaction
// writes a logical message, and its commit is flushed (synchronous_commit
// is at least local on the pinned session). A commit that was not flushed
// could be forgotten by a crash and the id handed out again.
//
// The key is written in, not sent as a parameter: lib/pq then sends it as
// one simple query. pgx prepares it on the session's first use, in its own
// statement cache, like every statement here with a result (a round trip
// more, before Token, off the takeover path); nothing is prepared through
// database/sql, whose statements must be closed (see lockOn).
func flushSQL(key int64) string {
	classid, objid := KeyParts(key)
	return `SELECT pg_catalog.pg_backend_pid(), pg_catalog.txid_current(), ` +
		heldByMe(strconv.FormatUint(uint64(classid), 10), strconv.FormatUint(uint64(objid), 10)) + `,
	pg_catalog.pg_logical_emit_message(true, 'onlyone', 'fencing token')::text`
}

// errNotInPgLocks is the cause of a hold lost because pg_locks did not
// show the lock granted to the holding backend after the grant.
var errNotInPgLocks = errors.New("pg_locks does not show the lock held")

// flush runs flushSQL and then marks the token durable. Its error and dead
// are as beat's.
func (h *hold) flush() (err error, dead bool) {
	ctx, cancel := context.WithDeadline(context.Background(), h.lastSent().Add(h.l.cfg.loss+h.l.cfg.grace))
	defer cancel()
	var (
		pid   int
		token int64
		held  bool
		lsn   string
	)
	if err := h.conn.QueryRowContext(ctx, flushSQL(h.l.key)).Scan(&pid, &token, &held, &lsn); err != nil {
		return fmt.Errorf("taking the fencing token: %w", err), ctx.Err() == nil && sessionEnded(err)
	}
	if err := h.samePid(pid); err != nil {
		return err, false
	}
	if !held {
		return fmt.Errorf("the lock statement returned, but %w (backend %d, key %d)", errNotInPgLocks, h.pid, h.l.key), false
	}
	h.token = uint64(token)
	close(h.durable)
	return nil, false
}

// beat runs one heartbeat. dead reports that its error shows the session
// ended by the server or the network, not by this process. The statement's
// own deadline is Grace past the loss deadline (never more than LossTimeout
// + Grace from now): a driver closes the connection when it passes, which
// frees the lock, so it must not come before the holder's work has had
// Grace to stop. The loss itself is the timer's business.
func (h *hold) beat() (err error, dead bool) {
	sent := time.Now()
	h.mu.Lock()
	deadline := h.deadline
	h.mu.Unlock()
	if cap := sent.Add(h.l.cfg.loss); deadline.After(cap) {
		deadline = cap
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(h.l.cfg.grace))
	defer cancel()
	var pid int
	if h.sess != nil {
		// A Session's heartbeat also takes, releases and spreads its names
		// (session.go). A beat its watcher interrupted on purpose is not a
		// failure: the next one follows at once.
		p, ok, err := h.sess.beat(ctx, h)
		if err != nil {
			return fmt.Errorf("heartbeat: %w", err), ctx.Err() == nil && sessionEnded(err)
		}
		if !ok {
			return nil, false
		}
		if err := h.samePid(p); err != nil {
			return err, false
		}
		h.extend(sent)
		return nil, false
	}
	if err := h.conn.QueryRowContext(ctx, heartbeatSQL, h.l.cfg.heartbeat.Seconds()).Scan(&pid); err != nil {
		return fmt.Errorf("heartbeat: %w", err), ctx.Err() == nil && sessionEnded(err)
	}
	if err := h.samePid(pid); err != nil {
		return err, false
	}
	h.extend(sent)
	return nil, false
}

// samePid returns an error matching ErrBackendChanged when pid, reported
// by a statement on the hold's connection, is not the backend that took
// the lock: a transaction-mode pooler moved the session.
func (h *hold) samePid(pid int) error {
	if pid != h.pid {
		return fmt.Errorf("%w (pid %d, then %d)", ErrBackendChanged, h.pid, pid)
	}
	return nil
}

// sessionEnded reports whether err says that the server ended the session
// or the connection broke from the other side: an operator's terminate, a
// shutdown, a crash-reset (class 57P0, class 08), or a closed or reset
// socket. The lock is then free already, whatever this process does.
func sessionEnded(err error) bool {
	if st := sqlState(err); strings.HasPrefix(st, "57P0") || strings.HasPrefix(st, "08") {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, net.ErrClosed)
}

// unlockTries is how often cleanup tries to unlock: a cancel meant for the
// heartbeat can land on the unlock instead.
const unlockTries = 3

// cleanup unlocks and destroys the connection of a released hold. The
// unlock makes the hand-over synchronous: when Release returns, a waiter
// can already have the lock. It does not depend on Release's context: a
// Release with a done context on a reachable server still unlocks.
func (h *hold) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), unlockTimeout)
	defer cancel()
	unlock, arg := "SELECT pg_catalog.pg_advisory_unlock($1)", any(h.l.key)
	if h.sess != nil {
		// A Session's hold carries every name of the node: all go at once.
		unlock, arg = "SELECT pg_catalog.pg_advisory_unlock_all() WHERE $1::bigint IS NOT NULL", h.l.key
	}
	for i := 0; i < unlockTries; i++ {
		_, err := h.conn.ExecContext(ctx, unlock, arg)
		if err == nil || sqlState(err) != "57014" { // query_canceled
			break
		}
	}
	destroy(h.conn)
}

// cancelEvery is how long release waits for the heartbeat to return
// before it sends pg_cancel_backend again: a cancel that reaches the
// backend between two heartbeats does nothing.
const cancelEvery = 50 * time.Millisecond

// releaseGrace is how long release waits for the clean-up beyond a
// heartbeat, whatever its context: on a reachable server it takes
// milliseconds.
const releaseGrace = time.Second

// release ends the hold (closing Lost before anything else), stops the
// heartbeat, interrupting its statement with pg_cancel_backend through the
// pool, and waits for it to unlock and destroy the connection: for a
// heartbeat and releaseGrace even when ctx is done already, and longer
// while ctx lasts.
//
// The cancel goes through the pool, not through the driver: cancelling
// the statement's context would make pgx close the connection and lib/pq
// mark it bad, and the unlock, which makes the hand-over synchronous,
// could not follow. Where every connection the pool allows is in use, the
// heartbeat ends by itself within HeartbeatInterval instead.
func (h *hold) release(ctx context.Context) error {
	wasHeld := false
	h.stopOnce.Do(func() {
		wasHeld = h.endErr() == nil
		h.end(locker.ErrNotHeld)
		close(h.stop)
	})
	if wasHeld && !h.l.lastConn() {
		for i := 0; i < 3; i++ {
			select {
			case <-h.done:
				return nil
			default:
			}
			if err := h.l.signal(h.backend, "pg_cancel_backend"); err != nil {
				h.l.cfg.logger.Warn("could not interrupt the heartbeat; the hand-over waits for it to end", "lock", h.l.label, "pid", h.pid, "err", err)
				break
			}
			t := time.NewTimer(cancelEvery)
			select {
			case <-h.done:
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
	own := time.NewTimer(h.l.cfg.heartbeat + releaseGrace)
	defer own.Stop()
	select {
	case <-h.done:
		return nil
	case <-own.C:
	}
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the connection is stuck in the driver; it is destroyed when the driver returns, and the server frees the lock within SessionTimeout: %w", ctx.Err())
	}
}
