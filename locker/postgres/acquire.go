package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// heldByMe is true when this session holds the advisory lock whose
// classid and objid are $1 and $2. pid = pg_backend_pid() confines it to
// this session's database.
const heldByMe = `EXISTS (SELECT 1 FROM pg_locks
	WHERE locktype = 'advisory' AND classid::bigint = $1 AND objid::bigint = $2
	  AND objsubid = 1 AND granted AND pid = pg_backend_pid())`

// setupSQL configures the pinned session and reports what acquisition
// needs to know, in one round trip. idle_session_timeout exists from
// PostgreSQL 14 on; older servers skip it (and the Locker warns).
//
// It also asks whether the session holds the lock already: advisory locks
// are re-entrant, so a pooled session on which other code took the same
// key would make the wait succeed at once. And it warms the session's
// catalog caches for the verification, which on a new backend otherwise
// costs half a millisecond after the grant, on the takeover path.
const setupSQL = `SELECT pg_backend_pid(),
	(SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()),
	current_setting('server_version_num')::int,
	pg_is_in_recovery(),
	` + heldByMe + `,
	set_config('application_name', $3, false),
	set_config('lock_timeout', $4, false),
	set_config('statement_timeout', $5, false),
	set_config('idle_in_transaction_session_timeout', $5, false),
	CASE WHEN current_setting('server_version_num')::int >= 140000
		THEN set_config('idle_session_timeout', $5, false) END`

// lockSQL waits for the lock $3 for at most lock_timeout and, once it is
// granted, answers from the server's own state, in the same statement:
// the subquery (fenced by OFFSET 0) takes the lock; only then is the outer
// list evaluated. It reports the backend, whether it is a primary, whether
// pg_locks shows the lock granted to it (never trust a driver's answer
// about the lock: trust the server's), and the hold's fencing token — a
// transaction id, assigned now that the lock is held, and forced to WAL
// by a transactional logical message whose commit is flushed (without the
// flush a crash can forget the id and hand it out again) — and how long
// the statement waited, by the server's clock.
//
// One statement instead of a lock and then a verification saves a round
// trip after the grant, where takeover latency is counted.
const lockSQL = `SELECT g.pid, pg_is_in_recovery(), ` + heldByMe + `,
	txid_current(),
	pg_logical_emit_message(true, 'onlyone', $4)::text,
	(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000000)::bigint
FROM (SELECT pg_advisory_lock($3), pg_backend_pid() AS pid OFFSET 0) g`

// acquire pins a connection and takes the lock on it. On any failure it
// destroys the connection, so that no lock survives an error it reported.
func (l *Locker) acquire(ctx context.Context) (*hold, error) {
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return nil, l.ctxErrorf(ctx, "acquire: connecting: %w", err)
	}
	var b backend
	h, err := l.lockOn(ctx, conn, &b)
	if err != nil {
		destroy(conn)
		if b.pid != 0 && (ctx.Err() != nil || b.abandoned) {
			l.reap(b)
		}
		return nil, err
	}
	return h, nil
}

// A backend identifies a server process: pids are reused, pid and start
// time are not.
type backend struct {
	pid       int
	start     string
	abandoned bool // its wait for the lock was given up, not refused
}

// reapTimeout bounds reap.
const reapTimeout = time.Second

// reap ends the backend of a wait that was abandoned. Closing the
// connection is not enough: a backend blocked in a lock wait does not read
// its socket, so it would wait on, be granted the lock when it is freed,
// and hold it — for nobody — until it tried to answer. (lib/pq sends a
// cancel request when a context ends; pgx by default only sets a socket
// deadline.) The pid is matched with the backend's start time, so that a
// reused pid never ends an unrelated session.
func (l *Locker) reap(b backend) {
	ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
	defer cancel()
	_, err := l.db.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid = $1 AND backend_start::text = $2`, b.pid, b.start)
	if err != nil {
		l.cfg.logger.Warn("could not end the backend of an abandoned wait; it ends when its wait chunk does",
			"lock", l.label, "pid", b.pid, "err", err)
	}
}

// lockOn sets up the session on conn, waits for the lock in chunks and
// verifies it. The caller destroys conn when it returns an error. It
// stores the session's backend in b once it knows it.
func (l *Locker) lockOn(ctx context.Context, conn *sql.Conn, b *backend) (*hold, error) {
	classid, objid := KeyParts(l.key)
	var (
		pid, version   int
		started        string
		recovery, mine bool
		s1, s2, s3, s4 string
		s5             sql.NullString
	)
	// Every statement gets a deadline as well as the server's timeouts: on
	// a silent network a statement would otherwise wait for TCP to give up
	// (minutes), while the server ends the session after SessionTimeout.
	sctx, cancel := context.WithTimeout(ctx, l.cfg.sessionTimeout)
	defer cancel()
	err := conn.QueryRowContext(sctx, setupSQL, int64(classid), int64(objid), l.cfg.identity, ms(l.cfg.waitChunk), ms(l.cfg.sessionTimeout)).
		Scan(&pid, &started, &version, &recovery, &mine, &s1, &s2, &s3, &s4, &s5)
	if err != nil {
		return nil, l.ctxErrorf(ctx, "acquire: setting up the session: %w", err)
	}
	b.pid, b.start = pid, started
	if recovery {
		return nil, l.errorf("acquire: %w (pg_is_in_recovery() is true): a lock taken there would not exclude holders on the primary", locker.ErrStandby)
	}
	if mine {
		return nil, l.errorf("acquire: the pooled session (backend %d) holds this lock already: other code took it on a connection of the same pool", pid)
	}
	lock, err := conn.PrepareContext(sctx, lockSQL)
	if err != nil {
		return nil, l.ctxErrorf(ctx, "acquire: preparing the lock statement: %w", err)
	}
	defer lock.Close()
	if version < 140000 {
		l.cfg.logger.Warn("PostgreSQL older than 14 has no idle_session_timeout: a frozen or partitioned holder keeps the lock until its TCP connection dies",
			"lock", l.label, "server_version_num", version)
	}

	// Wait in chunks: a statement waiting for a lock holds a snapshot,
	// which holds back VACUUM everywhere; lock_timeout ends each chunk.
	var (
		sent          time.Time
		vpid          int
		standby, held bool
		token, waited int64
		lsn           string
	)
	for {
		wctx, wcancel := context.WithTimeout(ctx, l.cfg.waitChunk+l.cfg.sessionTimeout)
		sent = time.Now()
		err = lock.QueryRowContext(wctx, int64(classid), int64(objid), l.key, "fencing token for lock "+l.label).
			Scan(&vpid, &standby, &held, &token, &lsn, &waited)
		wcancel()
		if ctx.Err() != nil {
			// Whatever the driver said, the lock may or may not be held
			// (a cancelled statement can report success without the lock
			// and failure with it): the caller destroys the session.
			return nil, l.errorf("acquire: %w", ctx.Err())
		}
		if err == nil {
			break
		}
		if !isLockTimeout(err) {
			b.abandoned = true
			return nil, l.errorf("acquire: waiting for the lock: %w", err)
		}
	}
	switch {
	case vpid != pid:
		return nil, l.errorf("acquire: %w (pid %d, then %d)", ErrBackendChanged, pid, vpid)
	case standby:
		return nil, l.errorf("acquire: %w", locker.ErrStandby)
	case !held:
		return nil, l.errorf("acquire: the server reported the lock taken but pg_locks does not show it held by backend %d", pid)
	}
	// The loss deadline counts from a moment no later than the grant: the
	// send time plus the wait the server measured. (The statement started
	// on the server after it was sent; the grant came after that wait.)
	granted := sent.Add(time.Duration(waited) * time.Microsecond)
	// An answer read long after the grant — the process was paused while it
	// waited — vouches for nothing: the server may have ended the silent
	// session and granted the lock to someone else meanwhile. Found by the
	// chaos suite: a resumed waiter started its work on such a grant.
	if late := time.Since(granted); late > l.cfg.loss {
		return nil, l.errorf("acquire: %w: the grant was read %v after it was made (was this process paused?)", errStaleGrant, late.Round(time.Millisecond))
	}
	return newHold(l, conn, pid, uint64(token), granted), nil
}

// errStaleGrant is the cause of a failed Acquire whose grant was read more
// than LossTimeout after it was made.
var errStaleGrant = errors.New("stale grant")

// ctxErrorf is errorf, except that when ctx is done the error matches
// ctx.Err() too, whatever the driver made of the cancellation.
func (l *Locker) ctxErrorf(ctx context.Context, format string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return l.errorf(format, fmt.Errorf("%w (%v)", cerr, err))
	}
	return l.errorf(format, err)
}

// destroy closes the physical connection under conn instead of returning
// it to the pool, so that the server ends the session and every lock and
// setting with it. (conn.Close alone would put it back in the pool still
// holding the lock.)
func destroy(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// unlockTimeout bounds the unlock statement of a Release whose context
// has no deadline.
const unlockTimeout = 5 * time.Second
