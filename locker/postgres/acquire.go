package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// heldByMe is true when this session holds the advisory lock whose
// classid and objid are the SQL expressions classid and objid (parameters
// in setupSQL, literals in flushSQL). pid = pg_backend_pid() confines it
// to this session's database. Every catalog object is schema-qualified,
// here and in every statement of this package: a role's search_path must
// not be able to put a look-alike of pg_locks or clock_timestamp() in
// their way.
func heldByMe(classid, objid string) string {
	return `EXISTS (SELECT 1 FROM pg_catalog.pg_locks
	WHERE locktype = 'advisory' AND classid::bigint = ` + classid + ` AND objid::bigint = ` + objid + `
	  AND objsubid = 1 AND granted AND pid = pg_catalog.pg_backend_pid())`
}

// setupSQL configures the pinned session and reports what acquisition
// needs to know, in one round trip. idle_session_timeout exists from
// PostgreSQL 14 on; older servers skip it (and the Locker warns).
//
// It also asks whether the session holds the lock already: advisory locks
// are re-entrant, so a pooled session on which other code took the same
// key would make the wait succeed at once. And it warms the session's
// catalog caches for the same question in the hold's first statement
// (flushSQL), which on a new backend otherwise costs half a millisecond
// more after the grant.
//
// The settings, all on a session that is never returned to the pool:
//   - the server-side bound (statement_timeout and the idle timeouts);
//   - synchronous_commit at least local where the database or role turned
//     it off: the fencing token is a transaction id, and a commit that was
//     not flushed can be forgotten by a crash and the id handed out again;
//   - search_path, so that nothing the role put first can shadow the
//     catalog in the statements that follow;
//   - the TCP settings that could end the session before SessionTimeout
//     (tcp_user_timeout, tcp_keepalives_*), put back to the operating
//     system's defaults where a server or role lowered them.
var setupSQL = `SELECT pg_catalog.pg_backend_pid(),
	(SELECT backend_start::text FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()),
	pg_catalog.current_setting('server_version_num')::int,
	pg_catalog.pg_is_in_recovery(),
	` + heldByMe("$1", "$2") + `,
	pg_catalog.concat_ws(',',
		pg_catalog.set_config('application_name', $3, false),
		pg_catalog.set_config('lock_timeout', $4, false),
		pg_catalog.set_config('statement_timeout', $5, false),
		pg_catalog.set_config('idle_in_transaction_session_timeout', $5, false),
		CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 140000
			THEN pg_catalog.set_config('idle_session_timeout', $5, false) END,
		CASE WHEN pg_catalog.current_setting('synchronous_commit') = 'off'
			THEN pg_catalog.set_config('synchronous_commit', 'local', false) END,
		pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)),
	` + tcpSQL

// tcpSQL raises the TCP settings of the session that would let the
// server end a silent session before SessionTimeout: tcp_user_timeout
// ($6, in milliseconds) and the keepalives (idle + interval × count, $7 in
// seconds). Zero means the operating system's default (hours for
// keepalives, about 15 minutes of retransmissions), which is left alone.
// Any role may set them. Over a Unix socket they do nothing.
//
// It reports what it raised, as "name from old to new", for the log.
const tcpSQL = `(SELECT pg_catalog.concat_ws(', ',
		CASE WHEN u > 0 AND u < $6::text::int THEN 'tcp_user_timeout from ' || u || 'ms to ' ||
			pg_catalog.set_config('tcp_user_timeout', $6::text, false) || 'ms' END,
		CASE WHEN i > 0 AND i + coalesce(iv, 0) * coalesce(n, 0) < $7::text::int THEN 'tcp_keepalives_idle from ' || i || 's to ' ||
			pg_catalog.set_config('tcp_keepalives_idle', $7::text, false) || 's' END)
	FROM (SELECT max(setting::int) FILTER (WHERE name = 'tcp_user_timeout') AS u,
			max(setting::int) FILTER (WHERE name = 'tcp_keepalives_idle') AS i,
			max(setting::int) FILTER (WHERE name = 'tcp_keepalives_interval') AS iv,
			max(setting::int) FILTER (WHERE name = 'tcp_keepalives_count') AS n
		FROM pg_catalog.pg_settings WHERE name LIKE 'tcp\_%') t)`

// upSQL reports how long, by the server's clock, the server has been a
// writable primary for sure, in microseconds: the time since the latest
// moment at which it may have started, reset or been promoted, as far as
// an unprivileged role can see (measured on PostgreSQL 15, see the package
// doc):
//   - pg_postmaster_start_time(): a restart;
//   - pg_stat_bgwriter.stats_reset: statistics are discarded after crash
//     recovery, so a crash-reset (a backend killed, the postmaster
//     re-initialising) moves it to the recovery; an administrator's reset
//     of those statistics only costs a wait;
//   - for a server that replayed WAL since it started (pg_last_wal_replay_lsn
//     not null) after streaming it or on a timeline after the first — a
//     promoted standby: the time of its latest checkpoint (a whole second,
//     rounded down, hence the second added), which is at or after the
//     promotion once a checkpoint on the new timeline exists (any later
//     one only moves the bound later); before that one exists (the WAL's
//     timeline differs from the checkpoint's) it was promoted moments ago,
//     and the answer is 0.
//
// It runs on a primary only (pg_walfile_name fails in recovery).
const upSQL = `SELECT (extract(epoch FROM pg_catalog.clock_timestamp() - GREATEST(
		pg_catalog.pg_postmaster_start_time(),
		(SELECT stats_reset FROM pg_catalog.pg_stat_bgwriter),
		CASE WHEN pg_catalog.pg_last_wal_replay_lsn() IS NOT NULL
			AND (pg_catalog.pg_last_wal_receive_lsn() IS NOT NULL OR w.tl > 1) THEN
			CASE WHEN w.tl <> c.timeline_id THEN pg_catalog.clock_timestamp()
				ELSE c.checkpoint_time + interval '1 second' END
		END)) * 1000000)::bigint
FROM pg_catalog.pg_control_checkpoint() c,
	(SELECT ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tl) w`

// lockSQL waits for the lock $1 for at most lock_timeout and, once it is
// granted, answers from the server's own state, in the same statement:
// the subquery (fenced by OFFSET 0) takes the lock; only then is the outer
// list evaluated. It reports the backend, whether it is a primary, and how
// long the statement waited, by the server's clock.
//
// It does nothing else: the answer is on the takeover path, where every
// microsecond of server work counts. The checks that need not be there —
// that pg_locks shows the lock granted to this backend (never trust a
// driver's answer about the lock: trust the server's), and the fencing
// token — are the hold's first statement (flushSQL), which Token waits for.
//
// Once the lock is held it also sets client_connection_check_interval
// (PostgreSQL 14 on): the heartbeat keeps a statement in flight, and a
// backend busy with a statement notices that its client died — the
// holder's process crashed — only when it checks. Waiters do not pay for
// the checks.
const lockSQL = `SELECT g.pid, pg_catalog.pg_is_in_recovery(),
	(extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()) * 1000000)::bigint,
	CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 140000
		THEN pg_catalog.set_config('client_connection_check_interval', $2, false) END
FROM (SELECT pg_catalog.pg_advisory_lock($1), pg_catalog.pg_backend_pid() AS pid OFFSET 0) g`

// detachAfter is how long acquire waits, once ctx is done, for the driver
// to give the connection back before it returns without it.
const detachAfter = 100 * time.Millisecond

// An acquisition is what acquireSync returns.
type acquisition struct {
	h     *hold
	ready time.Time
	err   error
}

// acquire is acquireSync, except that it returns soon after ctx ends even
// when the driver does not: lib/pq ignores deadlines on a silent network,
// and a setup or lock statement could then block until TCP gives up
// (minutes). The driver call goes on in the background, and whatever it
// yields is destroyed when the driver gives it back; the server ends the
// session within SessionTimeout in any case.
func (l *Locker) acquire(ctx context.Context) (*hold, time.Time, error) {
	res := make(chan acquisition, 1)
	go func() {
		h, ready, err := l.acquireSync(ctx)
		res <- acquisition{h, ready, err}
	}()
	var r acquisition
	select {
	case r = <-res:
	case <-ctx.Done():
		t := time.NewTimer(detachAfter)
		defer t.Stop()
		select {
		case r = <-res:
		case <-t.C:
			go func() {
				if r := <-res; r.h != nil {
					r.h.end(locker.ErrNotHeld)
					destroy(r.h.conn)
				}
			}()
			return nil, time.Time{}, l.errorf("acquire: %w (the driver did not return; its connection is destroyed when it does)", ctx.Err())
		}
	}
	return r.h, r.ready, r.err
}

// acquireSync pins a connection and takes the lock on it. On any failure
// it destroys the connection, so that no lock survives an error it
// reported. It returns the hold and the moment from which its grant counts
// (see readyAt and Locker.Acquire).
func (l *Locker) acquireSync(ctx context.Context) (*hold, time.Time, error) {
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return nil, time.Time{}, l.ctxErrorf(ctx, "acquire: connecting: %w", err)
	}
	l.warnLastConn()
	var b backend
	h, ready, err := l.lockOn(ctx, conn, &b)
	if err != nil {
		destroy(conn)
		if b.pid != 0 && (ctx.Err() != nil || b.abandoned) {
			l.reap(b)
		}
		return nil, time.Time{}, err
	}
	return h, ready, nil
}

// warnLastConn logs a warning when the connection just pinned was the last
// one the pool allows: the application's own queries now wait for one.
func (l *Locker) warnLastConn() {
	st := l.db.Stats()
	if st.MaxOpenConnections > 0 && st.InUse >= st.MaxOpenConnections {
		l.cfg.logger.Warn("the lock pinned the last connection the *sql.DB allows (SetMaxOpenConns): the application's queries wait until it is released; raise the limit, or give the locks a *sql.DB of their own",
			"lock", l.label, "max_open_conns", st.MaxOpenConnections, "in_use", st.InUse)
	}
}

// A backend identifies a server process: pids are reused, pid and start
// time are not.
type backend struct {
	pid       int
	start     string
	abandoned bool // its wait for the lock was given up, not refused
}

// reapTimeout bounds reap and the cancel of a heartbeat.
const reapTimeout = time.Second

// reap ends the backend of a wait that was abandoned. Closing the
// connection is not enough: a backend blocked in a lock wait does not read
// its socket, so it would wait on, be granted the lock when it is freed,
// and hold it — for nobody — until it tried to answer. (lib/pq sends a
// cancel request when a context ends; pgx by default only sets a socket
// deadline.)
func (l *Locker) reap(b backend) {
	if err := l.signal(b, "pg_terminate_backend"); err != nil {
		l.cfg.logger.Warn("could not end the backend of an abandoned wait; it ends when its wait chunk does",
			"lock", l.label, "pid", b.pid, "err", err)
	}
}

// signal calls fn (pg_terminate_backend or pg_cancel_backend) on the
// backend b through the pool, which works for any role on its own
// sessions. The pid is matched with the backend's start time, so that a
// reused pid never touches an unrelated session.
func (l *Locker) signal(b backend, fn string) error {
	ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
	defer cancel()
	_, err := l.db.ExecContext(ctx, `SELECT pg_catalog.`+fn+`(pid) FROM pg_catalog.pg_stat_get_activity($1)
		WHERE backend_start::text = $2`, b.pid, b.start)
	return err
}

// checkInterval is the holder's client_connection_check_interval: how
// often its backend, busy with the in-flight heartbeat, looks whether its
// client is still there. A holder whose process died is noticed by the
// server within it (on average half of it), and the lock passes to the
// next waiter then. It costs the server a timer interrupt per interval
// per holder (measured here, a backend in pg_sleep: 3.2% of a core at
// 1ms, 2.3% at 2ms, 1.4% at 5ms).
const checkInterval = 2 * time.Millisecond

// lockOn sets up the session on conn, waits for the lock in chunks, and
// checks the answer's backend and that the server is a primary (pg_locks
// is read by the hold's first statement, flushSQL). The caller destroys
// conn when it returns an error. It stores the session's backend in b
// once it knows it.
func (l *Locker) lockOn(ctx context.Context, conn *sql.Conn, b *backend) (*hold, time.Time, error) {
	classid, objid := KeyParts(l.key)
	var (
		pid, version   int
		started        string
		recovery, mine bool
		settings       sql.NullString
		raised         string
	)
	// Every statement gets a deadline as well as the server's timeouts: on
	// a silent network a statement would otherwise wait for TCP to give up
	// (minutes), while the server ends the session after SessionTimeout.
	sctx, cancel := context.WithTimeout(ctx, l.cfg.sessionTimeout)
	defer cancel()
	err := conn.QueryRowContext(sctx, setupSQL, int64(classid), int64(objid), l.cfg.identity, ms(l.cfg.waitChunk), ms(l.cfg.sessionTimeout),
		strconv.FormatInt(l.cfg.sessionTimeout.Milliseconds(), 10),
		strconv.FormatInt(int64((l.cfg.sessionTimeout+time.Second-1)/time.Second), 10)).
		Scan(&pid, &started, &version, &recovery, &mine, &settings, &raised)
	if err != nil {
		return nil, time.Time{}, l.ctxErrorf(ctx, "acquire: setting up the session: %w", err)
	}
	b.pid, b.start = pid, started
	if recovery {
		return nil, time.Time{}, l.errorf("acquire: %w (pg_is_in_recovery() is true): a lock taken there would not exclude holders on the primary", locker.ErrStandby)
	}
	if mine {
		return nil, time.Time{}, l.errorf("acquire: the pooled session (backend %d) holds this lock already: other code took it on a connection of the same pool", pid)
	}
	if raised != "" {
		l.cfg.logger.Warn("raised TCP settings of the lock's session that could end it before SessionTimeout",
			"lock", l.label, "raised", raised, "session_timeout", l.cfg.sessionTimeout)
	}
	if version < 140000 {
		l.cfg.logger.Warn("PostgreSQL older than 14 has no idle_session_timeout: a frozen or partitioned holder keeps the lock until its TCP connection dies",
			"lock", l.label, "server_version_num", version)
	}
	ready, err := l.readyAt(sctx, conn)
	if err != nil {
		return nil, time.Time{}, l.ctxErrorf(ctx, "acquire: reading when the server started: %w", err)
	}
	// No statement is prepared on the pinned connection (*sql.Stmt): a
	// prepared statement must be closed, and a close is a round trip
	// outside the deadlines that bound this connection's statements (pgx
	// gives it 5s, then closes the socket and so frees the lock), which
	// lib/pq writes in two pieces: a process frozen between them leaves
	// the server waiting mid-message, where idle_session_timeout does not
	// run, and the lock held for as long as the freeze lasts. The drivers
	// parse these statements themselves (pgx caches them on the session;
	// lib/pq parses before each wait).

	// Wait in chunks: a statement waiting for a lock holds a snapshot,
	// which holds back VACUUM everywhere; lock_timeout ends each chunk.
	var (
		sent    time.Time
		vpid    int
		standby bool
		waited  int64
		checks  sql.NullString
	)
	for {
		wctx, wcancel := context.WithTimeout(ctx, l.cfg.waitChunk+l.cfg.sessionTimeout)
		sent = time.Now()
		err = conn.QueryRowContext(wctx, lockSQL, l.key, ms(checkInterval)).
			Scan(&vpid, &standby, &waited, &checks)
		wcancel()
		if ctx.Err() != nil {
			// Whatever the driver said, the lock may or may not be held
			// (a cancelled statement can report success without the lock
			// and failure with it): the caller destroys the session.
			return nil, time.Time{}, l.errorf("acquire: %w", ctx.Err())
		}
		if err == nil {
			break
		}
		if !isLockTimeout(err) {
			b.abandoned = true
			return nil, time.Time{}, l.errorf("acquire: waiting for the lock: %w", err)
		}
	}
	switch {
	case vpid != pid:
		return nil, time.Time{}, l.errorf("acquire: %w (pid %d, then %d)", ErrBackendChanged, pid, vpid)
	case standby:
		return nil, time.Time{}, l.errorf("acquire: %w", locker.ErrStandby)
	}
	// The loss deadline counts from a moment no later than the grant: the
	// send time plus the wait the server measured. (The statement started
	// on the server after it was sent; the grant came after that wait.)
	// The server's clock may step: the wait is clamped to what this
	// process measured, so that the deadline is never later than now +
	// LossTimeout.
	granted := sent.Add(clamp(time.Duration(waited)*time.Microsecond, time.Since(sent)))
	// An answer read long after the grant — the process was paused while it
	// waited — vouches for nothing: the server may have ended the silent
	// session and granted the lock to someone else meanwhile. Found by the
	// chaos suite: a resumed waiter started its work on such a grant.
	if late := time.Since(granted); late > l.cfg.loss {
		return nil, time.Time{}, l.errorf("acquire: %w: the grant was read %v after it was made (was this process paused?)", errStaleGrant, late.Round(time.Millisecond))
	}
	return newHold(l, conn, *b, granted), ready, nil
}

// clamp returns d within [0, max].
func clamp(d, max time.Duration) time.Duration {
	return min(maxDur(d, 0), max)
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// readyAt returns the moment from which a grant on the session of conn
// counts: when the server will have been a writable primary for
// SessionTimeout. Any holder from before a restart, crash-reset or
// promotion has then given up (LossTimeout) and stopped its work (Grace).
//
// The session itself bounds it: restarts and resets end every session, and
// a session that found the server out of recovery was set up after any
// promotion. So a grant counts at the latest SessionTimeout after setup —
// what a waiter that has waited that long already has, which keeps a crash
// takeover at milliseconds. upSQL may show the server up for longer; where
// the role may not read it, the session's bound is used, and the Locker
// warns once.
func (l *Locker) readyAt(ctx context.Context, conn *sql.Conn) (time.Time, error) {
	var up sql.NullInt64
	err := conn.QueryRowContext(ctx, upSQL).Scan(&up)
	now := time.Now()
	switch {
	case sqlState(err) == "42501": // insufficient_privilege
		l.warnUpOnce.Do(func() {
			l.cfg.logger.Warn("this role cannot read when the server last started (pg_control_checkpoint, pg_stat_bgwriter): every new session waits SessionTimeout before a grant on it counts",
				"lock", l.label, "err", err)
		})
	case err != nil:
		return time.Time{}, err
	case up.Valid && up.Int64 > 0:
		return now.Add(l.cfg.sessionTimeout - time.Duration(up.Int64)*time.Microsecond), nil
	}
	return now.Add(l.cfg.sessionTimeout), nil
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
