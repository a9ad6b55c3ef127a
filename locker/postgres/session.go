package postgres

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// The reserved key space: the advisory-lock keys whose upper 32 bits
// (pg_locks.classid) are these hold a Session's presence, its doorbell
// (two keys: a ring moves it from one to the other) and its interest in a
// name another session holds (in shared mode; the lower 32 bits are the
// name's). Session.Locker refuses a name whose Key falls there (4 names
// in 2^32).
const (
	presenceClass = 0x6f6e6c79 // "only"
	bellClass     = 0x6f6e6c7a
	bellClass2    = 0x6f6e6c7b
	interestClass = 0x6f6e6c7c
)

func presenceKey(id uint32) int64 { return int64(uint64(presenceClass)<<32 | uint64(id)) }
func bellKey(id uint32) int64     { return int64(uint64(bellClass)<<32 | uint64(id)) }

// otherBell returns the doorbell key a ring moves to from bell.
func otherBell(bell int64) int64 {
	c, o := KeyParts(bell)
	if c == bellClass {
		return int64(uint64(bellClass2)<<32 | uint64(o))
	}
	return int64(uint64(bellClass)<<32 | uint64(o))
}

func reserved(key int64) bool {
	c, _ := KeyParts(key)
	return c >= presenceClass && c <= interestClass
}

// ErrLockTableFull is the error of an Acquire that found the server's
// shared lock table full (SQLSTATE 53200): every advisory lock of every
// session lives there, max_locks_per_transaction × (max_connections +
// max_prepared_transactions) entries. Holds taken earlier are kept.
var ErrLockTableFull = errors.New("the server's shared lock table is full (SQLSTATE 53200): raise max_locks_per_transaction, or hold fewer names on this server")

// ErrShed is the cause of a loss when a Session gave a name up so that
// names spread evenly over the live Sessions (see WithSpread). The name
// passes to a Session under its share once Release is called.
var ErrShed = fmt.Errorf("%w: given up to spread names over the live Sessions", locker.ErrHandedOver)

// A Session is one node's membership in a group of contenders for many
// names: one pinned server connection holds every lock its Lockers hold,
// keeps a heartbeat in flight and, in the same statement, watches the
// other Sessions; one more, idle, interrupts that heartbeat when a name is
// released. So a node costs at most two server connections whatever the
// number of names it holds or waits for. It is to Locker what etcd's concurrency.Session is
// to its Mutex: the Session owns the connection, the heartbeat, the loss
// deadline and the server-side bound; a Locker made by Session.Locker is a
// name on it. See the package doc, "Many singletons".
type Session struct {
	db   *sql.DB
	cfg  config
	id   uint32
	pres *Locker // the presence lock: its hold is the Session's pinned connection

	start     sync.Mutex    // serialises starting and closing runs
	closing   chan struct{} // closed by Close before it waits for start: a run being started gives up
	closeOnce sync.Once

	mu     sync.Mutex
	cur    *run // the current run; nil before the first Acquire
	closed bool
}

// NewSession returns a Session on the database that db reaches, with the
// same Options as New (heartbeat, loss timeout, grace, session timeout,
// wait chunk, identity, logger) and WithSpread. Like New it does not
// connect: the first Acquire of one of its Lockers does. A Session that
// lost its connection (a restart, an operator's terminate) starts a new
// one at the next Acquire.
//
// It returns an error matching locker.ErrConfig for a nil db or settings
// that cannot work.
func NewSession(db *sql.DB, opts ...Option) (*Session, error) {
	if db == nil {
		return nil, configError("nil *sql.DB")
	}
	var b [4]byte
	for binary.BigEndian.Uint32(b[:]) == 0 {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("postgres: session id: %w", err)
		}
	}
	id := binary.BigEndian.Uint32(b[:])
	pres, err := newLocker(db, presenceKey(id), fmt.Sprintf("session %08x", id), opts)
	if err != nil {
		return nil, err
	}
	return &Session{db: db, cfg: pres.cfg, id: id, pres: pres, closing: make(chan struct{})}, nil
}

// Locker returns a contender for the lock called name on s. The lock is
// the one New(db, name) contends for: Session Lockers and plain Lockers
// of the same name exclude one another. The Locker implements
// locker.Locker, locker.Errer, locker.Graceful, locker.Fencer,
// locker.Voucher and locker.Inspector, and runs under supervise unchanged.
//
// Its holds are the Session's: they are lost together when the Session's
// connection is (Lost closes for every one), and a hold lost with the
// cause ErrShed was given up so that names spread evenly. Names taken in
// one statement share a fencing token.
//
// Two Lockers of the same name on one Session take turns, as two on
// different Sessions would.
func (s *Session) Locker(name string) (locker.Locker, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	key := Key(name)
	if reserved(key) {
		return nil, configError("lock name %q has a key in the range Sessions reserve (classid %#x or %#x): choose another name", name, presenceClass, bellClass)
	}
	return &sessionLocker{s: s, key: key, label: fmt.Sprintf("%q", name)}, nil
}

// Close releases every hold of s and ends its connections. It closes
// every Lost at once, then waits until each held name has been released
// by its Locker (under package supervise: once its work stopped), or Grace
// has passed, before it ends the connection that holds them: ending it
// frees every name at once. Acquire on a Locker of a closed Session
// returns an error.
//
// Close returns within Grace + HeartbeatInterval + 2s, even when the
// network to the server has gone silent and the driver ignores deadlines
// there (lib/pq): it then returns an error, every Lost is closed all the
// same, the connections are destroyed once the driver gives them back,
// and the server frees the names within SessionTimeout in any case. An
// Acquire that is starting the Session's connection meanwhile (connecting,
// waiting out a restart quarantine) gives up with an error rather than
// making Close wait for it.
func (s *Session) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.start.Lock()
	defer s.start.Unlock()
	s.mu.Lock()
	s.closed = true
	r := s.cur
	s.cur = nil
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	return r.close()
}

// errorf returns an error prefixed with the package and the session.
func (s *Session) errorf(format string, args ...any) error {
	return fmt.Errorf("postgres: session %08x: "+format, append([]any{s.id}, args...)...)
}

// startErr is the error of a start of a run that failed with err: a Close
// meanwhile makes it say so.
func (s *Session) startErr(err error) error {
	select {
	case <-s.closing:
		return s.errorf("closed while starting: %w", err)
	default:
		return s.errorf("starting: %w", err)
	}
}

// runFor returns the current run, starting one when there is none or the
// last was lost.
func (s *Session) runFor(ctx context.Context) (*run, error) {
	// A Close meanwhile ends the start as ctx would: Close must not wait
	// behind a connect, a restart quarantine or a Grace of somebody
	// else's Acquire.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	s.start.Lock()
	defer s.start.Unlock()
	s.mu.Lock()
	r, closed := s.cur, s.closed
	s.mu.Unlock()
	if closed {
		return nil, s.errorf("closed")
	}
	if r != nil && !r.h.isLost() {
		return r, nil
	}
	if r != nil {
		// The old run's poker ends by itself once its hold is lost, unless
		// it is stuck in the driver (lib/pq on a silent network): it then
		// keeps its connection until the driver gives it back, and is
		// not waited for longer than Close waits for it.
		t := time.NewTimer(reapTimeout)
		select {
		case <-r.done:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, s.startErr(ctx.Err())
		}
		t.Stop()
		// Starting the new run releases the old hold, which ends its
		// session: every name still held on it would be free at once,
		// while its work may still be stopping. Wait until each is
		// released, or Grace has passed since the loss.
		if err := r.waitReleased(ctx, s.cfg.grace); err != nil {
			return nil, s.startErr(err)
		}
	}
	r = newRun(s)
	s.pres.sess = r
	if err := s.pres.Acquire(ctx); err != nil {
		return nil, s.startErr(err)
	}
	s.pres.mu.Lock()
	r.h = s.pres.cur
	s.pres.mu.Unlock()
	go r.watchLoss()
	go r.poker()
	s.mu.Lock()
	s.cur = r
	s.mu.Unlock()
	s.cfg.logger.Info("session started", "session", fmt.Sprintf("%08x", s.id), "pid", r.h.pid)
	return r, nil
}

// A run is one connection's worth of a Session: the hold of its presence
// lock, on which every name is held and which also watches the other
// Sessions (see beatSQL), and the poker, which interrupts that hold's
// heartbeat from a second connection when a name is released.
type run struct {
	s *Session
	h *hold // set once the presence lock is held; beat is handed it instead

	pokes chan struct{} // a release asks the poker to interrupt the heartbeat (buffered, 1)
	done  chan struct{} // closed when the poker has ended
	ended chan struct{} // closed when watchLoss has ended

	mu        sync.Mutex
	closing   bool                // no more claims: the run is being closed
	claims    map[int64]*grant    // one waiting or holding grant per name
	unlock    []int64             // released names to unlock at the next beat
	ring      bool                // ring the doorbell at the next beat
	bell      int64               // the doorbell key this Session holds; 0 while it holds none
	bellKnown bool                // bell is known: false after a beat that failed part way
	dirty     bool                // beat at once: there is work
	live      []int64             // presence ids of the live Sessions that contend for these names, sorted, as of the last beat
	bells     []int64             // the doorbell keys held by any Session, as of the last beat
	interest  int64               // the interest key this Session holds in shared mode; 0 for none
	freeSince map[int64]time.Time // names seen free and not taken in every beat since
	keep      map[int64]time.Time // names taken past the share because nobody took them, when: not shed for keepFor
	shedAt    map[int64]time.Time // when this Session last shed a name
	rungFree  []int64             // free names left over when the doorbell last rang, sorted
	left      bool                // a Session left the live set at the last beat: look again soon
	fullUntil time.Time           // no takes before: the lock table was full
	beatDone  chan struct{}       // closed and replaced after each beat
	dropped   chan struct{}       // closed and replaced when a claim is dropped
}

func newRun(s *Session) *run {
	return &run{
		s:         s,
		pokes:     make(chan struct{}, 1),
		done:      make(chan struct{}),
		ended:     make(chan struct{}),
		claims:    map[int64]*grant{},
		freeSince: map[int64]time.Time{},
		keep:      map[int64]time.Time{},
		shedAt:    map[int64]time.Time{},
		beatDone:  make(chan struct{}),
		dropped:   make(chan struct{}),
	}
}

// A grant is one name's claim on a run: waiting until granted, then held
// until released, shed or lost with the run.
type grant struct {
	r     *run
	key   int64
	label string

	ready chan struct{} // closed when granted
	lost  chan struct{} // closed when the hold ends, or a wait fails
	gone  chan struct{} // closed when the claim is given up

	// guarded by r.mu
	held  bool
	ended bool
	token uint64
	err   error
}

func (g *grant) endLocked(err error) {
	if g.ended {
		return
	}
	g.ended = true
	g.err = err
	close(g.lost)
}

// watchLoss ends every grant when the run's hold ends: the names were
// all held on its connection.
func (r *run) watchLoss() {
	defer close(r.ended)
	<-r.h.lost
	cause := r.h.endErr()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = true // a claim made from now on would wait for nothing: Acquire starts a new run
	for _, g := range r.claims {
		if g.held {
			g.endLocked(&LostError{Lock: g.label, PID: r.h.pid, Cause: cause})
		} else {
			g.endLocked(fmt.Errorf("session %08x ended while waiting: %w", r.s.id, cause))
		}
	}
}

// close ends the run: every name released, the connection unlocked and
// destroyed, the poker stopped. It returns within Grace +
// HeartbeatInterval + 2s, even when the driver is stuck on a silent
// network.
func (r *run) close() error {
	r.mu.Lock()
	r.closing = true
	for _, g := range r.claims {
		g.endLocked(locker.ErrNotHeld)
	}
	r.mu.Unlock()
	// Lost is closed for every name; the work on each may still be
	// stopping. Releasing the presence hold ends the session and frees
	// every name at once, so first wait until each is released (its work
	// stopped, under package supervise) or Grace has passed.
	_ = r.waitReleased(context.Background(), r.s.cfg.grace)
	// End the hold first: the poker then interrupts the heartbeat's wait
	// from the Session's own second connection, and the presence Locker's
	// Release, finding the hold ended, borrows no connection of the pool
	// to do it. The heartbeat unlocks everything and ends the session.
	r.h.end(locker.ErrNotHeld)
	// Release with a done context: it waits HeartbeatInterval + 1s of its
	// own for the unlock, and no longer (a driver stuck on a silent
	// network); the connection is then destroyed when the driver returns.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	err := r.s.pres.Release(done)
	<-r.ended
	t := time.NewTimer(reapTimeout)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C: // the poker is stuck in the driver too; it ends when that returns
	}
	if err != nil {
		return r.s.errorf("close: %w", err)
	}
	return nil
}

// waitReleased waits, for at most grace, until no name is held on the lost
// run r any more: each was released by its Locker (the work on it has
// stopped, under package supervise).
func (r *run) waitReleased(ctx context.Context, grace time.Duration) error {
	t := time.NewTimer(grace)
	defer t.Stop()
	for {
		r.mu.Lock()
		held := false
		for _, g := range r.claims {
			held = held || g.held
		}
		dropped := r.dropped
		r.mu.Unlock()
		if !held {
			return nil
		}
		select {
		case <-dropped:
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// errRunClosed is claim's error on a run that is being closed: Acquire
// starts a new one.
var errRunClosed = errors.New("session run closed")

// closeIdle closes r if it is the current run and has no claims left: a
// Session without names holds no connection.
func (s *Session) closeIdle(r *run) {
	s.start.Lock()
	defer s.start.Unlock()
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur != r {
		return
	}
	r.mu.Lock()
	idle := len(r.claims) == 0 && !r.closing
	if idle {
		r.closing = true
	}
	r.mu.Unlock()
	if !idle {
		return
	}
	s.mu.Lock()
	s.cur = nil
	s.mu.Unlock()
	if err := r.close(); err != nil {
		s.cfg.logger.Warn("closing the idle session", "session", fmt.Sprintf("%08x", s.id), "err", err)
	}
}

// claim registers g on r, waiting while another Locker of the same name
// on this Session has a claim.
func (r *run) claim(ctx context.Context, g *grant) error {
	for {
		r.mu.Lock()
		if r.closing {
			r.mu.Unlock()
			return errRunClosed
		}
		other := r.claims[g.key]
		if other == nil {
			r.claims[g.key] = g
			r.dirty = true
			r.mu.Unlock()
			return nil
		}
		r.mu.Unlock()
		select {
		case <-other.gone:
		case <-r.h.lost:
			return fmt.Errorf("session %08x ended while waiting: %w", r.s.id, r.h.endErr())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// drop gives g's claim up: a held name is unlocked at the next beat, and
// the doorbell rings so that another Session takes it. It returns a
// channel closed after a beat that started after the drop.
func (r *run) drop(g *grant) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	g.endLocked(locker.ErrNotHeld)
	if r.claims[g.key] == g {
		delete(r.claims, g.key)
		close(g.gone)
		close(r.dropped)
		r.dropped = make(chan struct{})
		delete(r.keep, g.key)
		if g.held {
			r.unlock = append(r.unlock, g.key)
			r.ring = true
			r.dirty = true
		}
	}
	// The beat in flight may have started before the drop: wait for the
	// one after it.
	first := r.beatDone
	next := make(chan struct{})
	go func() {
		select {
		case <-first:
		case <-r.h.lost:
			close(next)
			return
		}
		r.mu.Lock()
		c := r.beatDone
		r.mu.Unlock()
		select {
		case <-c:
		case <-r.h.lost:
		}
		close(next)
	}()
	return next
}

// beatSQL is a Session's heartbeat, and its watch over the other
// Sessions. Like heartbeatSQL it first waits on the server — $1 seconds
// by the server's clock, in steps of $14 — so that a statement is always in flight on the
// holding connection and its end is seen at once. Between steps it tries
// the key $15 in shared mode, and stops waiting as soon as it gets it (and
// lets it go): $15 is the doorbell of the next live Session around the
// ring (or its presence key while it holds no doorbell), which is free
// once that Session rang it or ended. The wait is a loop of short sleeps
// rather than one blocking lock wait because lock_timeout would end the
// statement with an error, and with it the rest of the beat. Then, in the
// same statement, in this order (each step a LATERAL subquery on the one
// before, which the server must evaluate first):
//
//  1. unlock the names released since the last beat ($2);
//  2. ring the doorbell ($3: take the other doorbell key $16 and release
//     the one held, $4 — the watcher of this Session, trying $4, wakes),
//     or, when the doorbell held is not known ($5 false), look in pg_locks
//     and take one if none is held;
//  3. read pg_locks once: the live Sessions that contend for these names
//     (presence keys, classid $6, of sessions that hold one of the names
//     wanted, $17, or an interest in one, or no name and no interest at
//     all: one that has just started), every name held, every doorbell
//     held;
//  4. take free names ($7), as many as the share allows: share($8 names
//     wanted, live Sessions, this Session's id $13) − $9 held already ($10
//     false: spreading off, all of them);
//  5. take the names ($11) seen free for forceAfter heartbeats whatever
//     the share: no other Session wanted them;
//  6. show an interest in one wanted name that another session holds
//     (the lowest; in shared mode, in place of the last one, $18), so
//     that the Sessions holding these names count this one in step 3;
//  7. report the wanted names still free, and a fencing token when it took
//     any (a transaction id flushed to WAL, as flushSQL does).
const beatSQL = `SELECT s.pid, b.bell, l.live, l.bells, t.taken, f.forced, e.free, i.interest,
	CASE WHEN pg_catalog.cardinality(t.taken) > 0 OR pg_catalog.cardinality(f.forced) > 0
		THEN pg_catalog.txid_current() END,
	CASE WHEN pg_catalog.cardinality(t.taken) > 0 OR pg_catalog.cardinality(f.forced) > 0
		THEN pg_catalog.pg_logical_emit_message(true, 'onlyone', $12)::text END
FROM (SELECT pg_catalog.pg_backend_pid() AS pid, (SELECT count(*) FROM (SELECT 1 FROM pg_catalog.generate_series(0, pg_catalog.ceil($1::float8 / $14::float8)::int) i
		WHERE CASE WHEN pg_catalog.clock_timestamp() >= pg_catalog.statement_timestamp() + $1::float8 * interval '1 second' THEN true
			WHEN $15::bigint <> 0 AND pg_catalog.pg_try_advisory_lock_shared($15::bigint)
			THEN pg_catalog.pg_advisory_unlock_shared($15::bigint)
			ELSE pg_catalog.pg_sleep(LEAST($14::float8, pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()
				+ $1::float8 * interval '1 second' - pg_catalog.clock_timestamp()))) IS NULL END
		LIMIT 1) w) AS woke OFFSET 0) s
CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE pg_catalog.pg_advisory_unlock(k)) AS n
	FROM pg_catalog.unnest($2::bigint[]) k WHERE s.woke IS NOT NULL) u
CROSS JOIN LATERAL (SELECT CASE
		WHEN $3 THEN CASE WHEN pg_catalog.pg_try_advisory_lock($16::bigint)
			THEN CASE WHEN pg_catalog.pg_advisory_unlock($4::bigint) THEN $16::bigint ELSE $16::bigint END
			ELSE $4::bigint END
		WHEN $5 THEN $4::bigint
		ELSE (SELECT CASE WHEN count(*) = 0 THEN CASE WHEN pg_catalog.pg_try_advisory_lock($4::bigint) THEN $4::bigint ELSE 0 END
				WHEN count(*) = 1 THEN max(k)
				WHEN pg_catalog.pg_advisory_unlock(min(k)) THEN max(k) ELSE max(k) END
			FROM (SELECT (classid::bigint << 32) | objid::bigint AS k FROM pg_catalog.pg_locks
				WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() AND objsubid = 1 AND granted AND mode = 'ExclusiveLock'
				  AND classid::bigint IN (1869507706, 1869507707) AND objid::bigint = $13) o)
		END AS bell
	WHERE u.n IS NOT NULL OFFSET 0) b
CROSS JOIN LATERAL (WITH x AS MATERIALIZED (SELECT pid AS p, classid::bigint AS c, objid::bigint AS o FROM pg_catalog.pg_locks
		WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND (mode = 'ExclusiveLock' OR classid::bigint = 1869507708)
		  AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
		  AND b.bell IS NOT NULL),
	n AS (SELECT DISTINCT p FROM x WHERE c < $6 OR c > 1869507707),
	k AS (SELECT pg_catalog.unnest($17::bigint[]) AS k),
	w AS (SELECT x.p FROM x JOIN k ON (x.c << 32) | x.o = k.k
		UNION SELECT x.p FROM x JOIN k ON x.c = 1869507708 AND x.o = k.k & 4294967295)
	SELECT coalesce((SELECT pg_catalog.array_agg(o ORDER BY o) FROM x WHERE c = $6
			AND (p = pg_catalog.pg_backend_pid() OR p IN (SELECT p FROM w) OR p NOT IN (SELECT p FROM n))), '{}') AS live,
		coalesce((SELECT pg_catalog.array_agg((c << 32) | o) FROM x WHERE c < $6 OR c > 1869507708), '{}') AS held,
		coalesce((SELECT pg_catalog.array_agg((c << 32) | o) FROM x WHERE c IN (1869507706, 1869507707)), '{}') AS bells) l
CROSS JOIN LATERAL (SELECT coalesce(pg_catalog.array_agg(k), '{}') AS taken FROM (
		SELECT k FROM pg_catalog.unnest($7::bigint[]) k
		WHERE pg_catalog.pg_try_advisory_lock(k)
		LIMIT GREATEST(0, CASE WHEN $10 THEN $8::int / GREATEST(pg_catalog.cardinality(l.live), 1)
			+ CASE WHEN (SELECT count(*) FROM pg_catalog.unnest(l.live) x WHERE x < $13) < $8::int % GREATEST(pg_catalog.cardinality(l.live), 1) THEN 1 ELSE 0 END
			- $9 ELSE $8 END)) q) t
CROSS JOIN LATERAL (SELECT coalesce(pg_catalog.array_agg(k), '{}') AS forced FROM pg_catalog.unnest($11::bigint[]) k
	WHERE k <> ALL (t.taken) AND pg_catalog.pg_try_advisory_lock(k)) f
CROSS JOIN LATERAL (SELECT coalesce(pg_catalog.array_agg(k), '{}') AS free FROM (
		SELECT pg_catalog.unnest($7::bigint[]) EXCEPT SELECT pg_catalog.unnest(l.held)
		EXCEPT SELECT pg_catalog.unnest(t.taken) EXCEPT SELECT pg_catalog.unnest(f.forced)) e(k)) e
CROSS JOIN LATERAL (SELECT CASE WHEN j.key IS NOT DISTINCT FROM $18::bigint THEN $18::bigint
		ELSE (SELECT CASE WHEN j.key IS NULL THEN 0::bigint WHEN pg_catalog.pg_try_advisory_lock_shared(j.key) THEN j.key ELSE 0::bigint END
			FROM (SELECT $18::bigint = 0 OR pg_catalog.pg_advisory_unlock_shared($18::bigint) AS z) u WHERE u.z IS NOT NULL) END AS interest
	FROM (SELECT (1869507708::bigint << 32) | (min(k) & 4294967295) AS key FROM (
		SELECT pg_catalog.unnest($7::bigint[]) INTERSECT SELECT pg_catalog.unnest(l.held)) h(k)) j) i`

// reconcileSQL unlocks those of the names $1 that this session holds, and
// its interest (see beatSQL): a beat that failed part way (a cancel meant for its sleep that came late,
// a full lock table) may have taken some without saying which, and
// session locks outlive a failed statement.
const reconcileSQL = `SELECT pg_catalog.pg_backend_pid(), (SELECT count(*) FILTER (WHERE pg_catalog.pg_advisory_unlock(k)) FROM (
	SELECT pg_catalog.unnest($1::bigint[])
	INTERSECT SELECT (classid::bigint << 32) | objid::bigint FROM pg_catalog.pg_locks
		WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND mode = 'ExclusiveLock' AND pid = pg_catalog.pg_backend_pid()) i(k)),
	(SELECT count(*) FILTER (WHERE pg_catalog.pg_advisory_unlock_shared((classid::bigint << 32) | objid::bigint)) FROM pg_catalog.pg_locks
		WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND mode = 'ShareLock' AND classid::bigint = 1869507708
		  AND pid = pg_catalog.pg_backend_pid())`

// int64s is a bigint[] parameter both drivers take: its text form.
type int64s []int64

func (a int64s) text() string {
	b := make([]byte, 0, 2+len(a)*20)
	b = append(b, '{')
	for i, k := range a {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, "%d", k)
	}
	return string(append(b, '}'))
}

// parse reads a bigint[] in its text form.
func parseInt64s(s string) ([]int64, error) {
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, fmt.Errorf("not an array: %q", s)
	}
	var out []int64
	var n int64
	neg, in := false, false
	for _, c := range s[1:] {
		switch {
		case c == '-':
			neg = true
		case c >= '0' && c <= '9':
			n = n*10 + int64(c-'0')
			in = true
		case c == ',' || c == '}':
			if in {
				if neg {
					n = -n
				}
				out = append(out, n)
			}
			n, neg, in = 0, false, false
		default:
			return nil, fmt.Errorf("not a bigint array: %q", s)
		}
	}
	return out, nil
}

// A name this Session wants that stays free for forceAfter heartbeats is
// taken whatever the share: every Session under its share would have
// taken it at its own beat by then, so no other Session wants it more.
// Except for keepShedOff heartbeats after this Session shed it: the
// Session it was shed for may not have taken it yet. A name so taken is
// not shed again for keepFor heartbeats; after that it is, if this
// Session is over its share: a name taken that way while Sessions came
// and went (a start, a deploy) must not unbalance them for good.
const (
	forceAfter  = 2
	keepShedOff = 4
	keepFor     = 10
)

// bellRetry is how soon a heartbeat tries again to take a doorbell, or
// to ring it, when it could not: a watcher held it in shared mode for a
// moment.
const bellRetry = 20 * time.Millisecond

// pollEvery is the step of the heartbeat's wait: how often it tries the
// watched Session's doorbell. A crash or a ring of that Session is seen
// within it (half of it on average). Each step costs the server a
// try-lock and a wake-up (measured: see bench/MANY.md).
const pollEvery = 10 * time.Millisecond

// beat runs one Session heartbeat on h's connection (see beatSQL) and
// hands out what it took. A beat that was cancelled (the poker, on a
// release) or found the lock table full is not a loss: it reconciles, and
// counts as a heartbeat since the session answered. ok is false when
// there is nothing to count.
func (r *run) beat(ctx context.Context, h *hold) (pid int, ok bool, err error) {
	cfg := r.s.cfg
	r.mu.Lock()
	full := time.Now().Before(r.fullUntil)
	sleep := cfg.heartbeat
	switch {
	case r.dirty || len(r.unlock) > 0:
		sleep = 0
	case full:
		// Nothing can be taken or rung until the lock table has room:
		// beat at the interval, not at bellRetry.
	case r.ring && r.bell != 0 && r.bellKnown:
		sleep = 0
	case r.bell == 0 || !r.bellKnown || r.ring || r.left:
		// No doorbell yet (or a ring that could not move it): try again
		// soon. Or a Session just left: a backend that ends releases its
		// locks one lock partition at a time, so the last beat may have
		// seen it gone while some of its names were still held; look
		// again soon, since nobody watches those any more.
		sleep = min(sleep, bellRetry)
	}
	r.left = false
	r.dirty = false
	unlock := slices.Clone(r.unlock)
	known := r.bellKnown && r.bell != 0
	bell := r.bell
	if bell == 0 {
		bell = bellKey(r.s.id)
	}
	ring := r.ring && known
	watch := r.watchKeyLocked()
	interest := r.interest
	var cands, forced, wanted []int64
	held := 0
	for k, g := range r.claims {
		wanted = append(wanted, k)
		switch {
		case g.held:
			held++
		case g.ended:
		case !r.freeSince[k].IsZero() && time.Since(r.freeSince[k]) >= forceAfter*cfg.heartbeat &&
			time.Since(r.shedAt[k]) > keepShedOff*cfg.heartbeat:
			forced = append(forced, k)
		default:
			cands = append(cands, k)
		}
	}
	want := len(r.claims)
	if full {
		// Nothing that needs a new entry in the lock table: no takes, no
		// watch (its shared try-lock needs one, and would fail the beat
		// before it unlocks what was released), and the doorbell neither
		// rung nor taken. (known is sent as true only to leave the
		// doorbell alone; the answer is the key sent.)
		cands, forced = nil, nil
		ring, known = false, true
		watch = 0
	}
	r.mu.Unlock()

	var (
		newBell, newInterest            int64
		live, bells, taken, took2, free string
		token                           sql.NullInt64
		lsn                             sql.NullString
	)
	sent := time.Now()
	err = h.conn.QueryRowContext(ctx, beatSQL, sleep.Seconds(), int64s(unlock).text(), ring, bell, known,
		int64(presenceClass), int64s(cands).text(), want, held, !cfg.noSpread, int64s(forced).text(),
		"fencing token for a session "+fmt.Sprintf("%08x", r.s.id), int64(r.s.id), pollEvery.Seconds(), watch,
		otherBell(bell), int64s(wanted).text(), interest).
		Scan(&pid, &newBell, &live, &bells, &taken, &took2, &free, &newInterest, &token, &lsn)
	if err != nil {
		// A cancelled beat (the poker's, which may come late, or an
		// operator's pg_cancel_backend) leaves the session alive, and so
		// does a full lock table: neither is a loss.
		full := sqlState(err) == "53200"
		if sqlState(err) != "57014" && !full {
			return 0, false, err
		}
		// Some names may be locked without our knowing: unlock them, and
		// the names released since the last beat, which the beat may
		// have failed before or after unlocking (reconcile needs no new
		// entry in a full lock table). The answer shows the session
		// alive: it counts as a heartbeat, so that a full lock table
		// costs no hold.
		pid, rerr := r.reconcile(ctx, h, slices.Concat(cands, forced, unlock))
		if rerr != nil {
			return 0, false, fmt.Errorf("%w (and then: %v)", rerr, err)
		}
		r.mu.Lock()
		if pid == h.pid {
			// The released names are unlocked: a Release waiting for the
			// beat after its drop may return.
			r.unlock = r.unlock[len(unlock):]
			close(r.beatDone)
			r.beatDone = make(chan struct{})
		}
		r.bellKnown = false // a ring may have stopped half way; the next beat looks
		r.interest = 0      // reconcile let it go
		if full {
			r.fullUntil = time.Now().Add(cfg.waitChunk)
			for _, k := range append(cands, forced...) {
				if g := r.claims[k]; g != nil && !g.held {
					g.endLocked(fmt.Errorf("session %08x: %w", r.s.id, ErrLockTableFull))
				}
			}
		}
		r.mu.Unlock()
		if full {
			cfg.logger.Error("the server's lock table is full: names not taken, holds kept", "session", fmt.Sprintf("%08x", r.s.id), "err", err)
		}
		return pid, true, nil
	}
	if late := time.Since(sent); late > cfg.loss {
		// Read too late to vouch for anything (was this process paused?).
		return 0, false, fmt.Errorf("%w: a heartbeat answer read %v after it was sent", errStaleGrant, late.Round(time.Millisecond))
	}
	liveIDs, err1 := parseInt64s(live)
	bellKeys, err2 := parseInt64s(bells)
	tk, err3 := parseInt64s(taken)
	fk, err4 := parseInt64s(took2)
	fr, err5 := parseInt64s(free)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return 0, false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if pid != h.pid {
		// Another backend answered (a transaction-mode pooler): grant
		// nothing on it; the hold reports ErrBackendChanged.
		return pid, true, nil
	}
	r.unlock = r.unlock[len(unlock):]
	slices.Sort(fr)
	if ring && newBell != bell {
		r.ring = false
		r.rungFree = fr
	}
	if !full {
		r.bell, r.bellKnown = newBell, true
	}
	if !slices.Equal(liveIDs, r.live) {
		r.rungFree = nil // the Sessions changed: free names are news again
		for _, id := range r.live {
			if _, found := slices.BinarySearch(liveIDs, id); !found {
				r.left = true
			}
		}
	}
	r.live = liveIDs
	r.bells = bellKeys
	r.interest = newInterest
	for _, k := range fk {
		r.keep[k] = time.Now()
	}
	for _, k := range append(tk, fk...) {
		g := r.claims[k]
		if g == nil || g.held || g.ended {
			// Given up while the beat ran: unlock at the next.
			r.unlock = append(r.unlock, k)
			r.dirty = true
			continue
		}
		g.held = true
		g.token = uint64(token.Int64)
		close(g.ready)
	}
	since := make(map[int64]time.Time, len(fr))
	for _, k := range fr {
		if t, ok := r.freeSince[k]; ok {
			since[k] = t
		} else {
			since[k] = sent
		}
	}
	r.freeSince = since
	// Free names left over that this Session is not taking: ring, so that
	// the Session that watches this one looks (it may be under its share).
	// Only when they are not the ones left over at the last ring, so that
	// names no Session takes do not ring around forever.
	if len(fr) > 0 && !slices.Equal(fr, r.rungFree) {
		r.ring = true
	}
	if len(tk)+len(fk) > 0 || len(fr) > 0 {
		cfg.logger.Debug("heartbeat", "session", fmt.Sprintf("%08x", r.s.id), "took", len(tk), "forced", len(fk), "free", len(fr), "live", len(liveIDs), "wanted", want, "held", held, "sleep", sleep)
	}
	r.shedLocked(pid)
	close(r.beatDone)
	r.beatDone = make(chan struct{})
	return pid, true, nil
}

// watchKeyLocked returns the key the next beat waits on: the doorbell of
// the next live Session in the order of their ids, around the ring, or
// its presence key while it holds no doorbell; 0 when this Session is
// alone. The ring is read afresh at every beat, so a Session that joins
// is watched from the next heartbeat of the one before it.
func (r *run) watchKeyLocked() int64 {
	if len(r.live) < 2 {
		return 0
	}
	me := int64(r.s.id)
	i, _ := slices.BinarySearch(r.live, me+1)
	next := r.live[i%len(r.live)]
	if next == me {
		return 0
	}
	for _, k := range r.bells {
		if _, o := KeyParts(k); int64(o) == next {
			return k
		}
	}
	return presenceKey(uint32(next))
}

// share returns how many of want names the Session id should hold when
// the live Sessions are live (sorted): want / len(live), and one more for
// the want % len(live) Sessions with the lowest ids, so that Sessions that
// want the same names end up holding numbers at most one apart. beatSQL
// computes the same.
func share(want int, live []int64, id int64) int {
	n := max(len(live), 1)
	rank, _ := slices.BinarySearch(live, id)
	s := want / n
	if rank < want%n {
		s++
	}
	return s
}

// shedLocked gives up the names this Session holds beyond its share,
// closing their Lost; the supervisor stops the work and calls Release,
// which unlocks the name and rings the doorbell.
func (r *run) shedLocked(pid int) {
	if r.s.cfg.noSpread || len(r.live) < 2 {
		return
	}
	share := share(len(r.claims), r.live, int64(r.s.id))
	var held []*grant
	for _, g := range r.claims {
		if g.held && !g.ended && time.Since(r.keep[g.key]) > keepFor*r.s.cfg.heartbeat {
			held = append(held, g)
		}
	}
	extra := len(held) - share
	if extra <= 0 {
		return
	}
	slices.SortFunc(held, func(a, b *grant) int { return int(a.token) - int(b.token) })
	for _, g := range held[len(held)-extra:] {
		g.endLocked(&LostError{Lock: g.label, PID: pid, Cause: ErrShed})
		r.shedAt[g.key] = time.Now()
	}
	r.s.cfg.logger.Info("names given up to spread them", "session", fmt.Sprintf("%08x", r.s.id), "names", extra, "share", share, "live", len(r.live))
}

// reconcile unlocks those of keys that the session holds (see
// reconcileSQL), and returns the backend pid: the session lives on.
func (r *run) reconcile(ctx context.Context, h *hold, keys []int64) (pid int, err error) {
	for i := 0; i < unlockTries; i++ {
		var n, m int
		err = h.conn.QueryRowContext(ctx, reconcileSQL, int64s(keys).text()).Scan(&pid, &n, &m)
		if err == nil || sqlState(err) != "57014" {
			break
		}
	}
	return pid, err
}

// pokeSQL interrupts the holding connection's heartbeat while it waits
// (and only then: a cancel that lands on anything else is wasted).
const pokeSQL = `SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_get_activity($1)
	WHERE backend_start::text = $2 AND wait_event = 'PgSleep'`

// pokeSetupSQL configures the poker's session: the node's identity, and a
// bound on its statements. It holds no lock, so it needs no
// idle_session_timeout, which would end it between two releases.
const pokeSetupSQL = `SELECT pg_catalog.concat_ws(',',
	pg_catalog.set_config('application_name', $1, false),
	pg_catalog.set_config('statement_timeout', $2, false),
	pg_catalog.set_config('idle_in_transaction_session_timeout', $2, false))`

// poker interrupts the heartbeat's wait from a connection of its own (the
// Session's second one), so that a release is carried out at once rather
// than at the next heartbeat: when a Locker releases a name (r.pokes), and
// once more when the run closes. It connects when the run starts, so that
// no connect is on the hand-over path; where it cannot connect, a release
// waits for the next heartbeat (HeartbeatInterval). It ends with the hold.
func (r *run) poker() {
	defer close(r.done)
	cfg := r.s.cfg
	var conn *sql.Conn
	defer func() {
		if conn != nil {
			destroy(conn)
		}
	}()
	connect := func() {
		if conn != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), cfg.sessionTimeout)
		defer cancel()
		c, err := r.s.db.Conn(ctx)
		if err == nil {
			var x sql.NullString
			if err = c.QueryRowContext(ctx, pokeSetupSQL, cfg.identity, ms(cfg.sessionTimeout)).Scan(&x); err != nil {
				destroy(c)
			}
		}
		if err != nil {
			cfg.logger.Warn("the session cannot connect its poker; a release waits for the next heartbeat meanwhile", "session", fmt.Sprintf("%08x", r.s.id), "err", err)
			return
		}
		conn = c
	}
	connect()
	for {
		var until <-chan struct{}
		select {
		case <-r.pokes:
			r.mu.Lock()
			until = r.beatDone
			r.mu.Unlock()
		case <-r.h.lost:
			if !errors.Is(r.h.endErr(), locker.ErrNotHeld) {
				return // lost: the hold is left alone for Grace
			}
			// Closed: the heartbeat ends after its beat in flight, and
			// then unlocks everything; do not let it wait.
			until = r.h.done
		}
		connect()
		if conn != nil {
			if err := r.pokeVia(conn, until); err != nil {
				destroy(conn)
				conn = nil
			}
		}
		if until == r.h.done {
			return
		}
	}
}

// poke asks the poker to interrupt the heartbeat's wait.
func (r *run) poke() {
	select {
	case r.pokes <- struct{}{}:
	default: // a poke is on its way already
	}
}

// pokeTries and pokeEvery bound how often a poke is sent again while the
// beat it was meant for does not end: a cancel that reaches the backend
// between two steps of its wait does nothing.
const (
	pokeTries = 5
	pokeEvery = 20 * time.Millisecond
)

// pokeVia interrupts the heartbeat's wait through conn until until is
// closed or the heartbeat has ended, or pokeTries times.
func (r *run) pokeVia(conn *sql.Conn, until <-chan struct{}) error {
	for i := 0; i < pokeTries; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
		_, err := conn.ExecContext(ctx, pokeSQL, r.h.backend.pid, r.h.backend.start)
		cancel()
		if err != nil {
			return err
		}
		t := time.NewTimer(pokeEvery)
		select {
		case <-until:
			t.Stop()
			return nil
		case <-r.h.done:
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return nil
}

var (
	_ locker.Locker    = (*sessionLocker)(nil)
	_ locker.Errer     = (*sessionLocker)(nil)
	_ locker.Graceful  = (*sessionLocker)(nil)
	_ locker.Fencer    = (*sessionLocker)(nil)
	_ locker.Voucher   = (*sessionLocker)(nil)
	_ locker.Inspector = (*sessionLocker)(nil)
)

// A sessionLocker is a name on a Session.
type sessionLocker struct {
	s     *Session
	key   int64
	label string

	op  sync.Mutex // serialises Acquire and Release
	mu  sync.Mutex // guards cur
	cur *grant     // the last grant; nil before the first Acquire
}

// Acquire blocks until the name is held on the Session, ctx is done, or
// the Session fails. The first Acquire on a Session connects it.
func (l *sessionLocker) Acquire(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	l.mu.Lock()
	g := l.cur
	l.mu.Unlock()
	if g != nil {
		g.r.mu.Lock()
		held := g.held && !g.ended
		mine := g.r.claims[g.key] == g
		g.r.mu.Unlock()
		if held {
			return locker.ErrHeld
		}
		if mine {
			// Lost or shed without Release: give the claim up first.
			<-g.r.drop(g)
		}
	}
	if err := ctx.Err(); err != nil {
		return l.errorf("acquire: %w", err)
	}
	var r *run
	for {
		var err error
		r, err = l.s.runFor(ctx)
		if err != nil {
			return l.errorf("acquire: %w", err)
		}
		g = &grant{r: r, key: l.key, label: l.label, ready: make(chan struct{}), lost: make(chan struct{}), gone: make(chan struct{})}
		err = r.claim(ctx, g)
		if err == errRunClosed {
			continue
		}
		if err != nil {
			return l.errorf("acquire: %w", err)
		}
		break
	}
	select {
	case <-g.ready:
	case <-g.lost:
	case <-ctx.Done():
	}
	r.mu.Lock()
	ok := g.held && !g.ended
	gerr := g.err
	r.mu.Unlock()
	if !ok {
		r.drop(g) // unlocks it at the next beat if it was granted meanwhile
		l.s.closeIdle(r)
		if gerr == nil || errors.Is(gerr, locker.ErrNotHeld) {
			gerr = ctx.Err()
		}
		if gerr == nil {
			gerr = locker.ErrNotHeld
		}
		return l.errorf("acquire: %w", gerr)
	}
	l.mu.Lock()
	l.cur = g
	l.mu.Unlock()
	l.s.cfg.logger.Info("lock acquired", "lock", l.label, "key", l.key, "session", fmt.Sprintf("%08x", l.s.id))
	return nil
}

// Release gives the name up: Lost closes, then the Session's connection
// unlocks it and rings the doorbell, so that another Session takes it.
// It returns once that is done, or the Session's connection has ended.
func (l *sessionLocker) Release(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	l.mu.Lock()
	g := l.cur
	l.mu.Unlock()
	if g == nil {
		return nil
	}
	g.r.mu.Lock()
	mine := g.r.claims[g.key] == g
	wasHeld := g.held
	g.r.mu.Unlock()
	if !mine {
		return nil
	}
	done := g.r.drop(g)
	if wasHeld {
		g.r.poke()
	}
	t := time.NewTimer(l.s.cfg.heartbeat + releaseGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		select {
		case <-done:
		case <-ctx.Done():
			return l.errorf("release: the unlock waits for the session's next heartbeat: %w", ctx.Err())
		}
	}
	l.s.cfg.logger.Info("lock released", "lock", l.label, "key", l.key, "session", fmt.Sprintf("%08x", l.s.id))
	l.s.closeIdle(g.r)
	return nil
}

// Lost returns a channel that is closed when the name is not held.
func (l *sessionLocker) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == nil {
		return closed
	}
	return l.cur.lost
}

// Err says why the name is not held, or nil while it is.
func (l *sessionLocker) Err() error {
	l.mu.Lock()
	g := l.cur
	l.mu.Unlock()
	if g == nil {
		return locker.ErrNotHeld
	}
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	return g.err
}

// Grace returns the Session's Grace.
func (l *sessionLocker) Grace() time.Duration { return l.s.cfg.grace }

// Token returns the fencing token of the current hold.
func (l *sessionLocker) Token() (uint64, bool) {
	l.mu.Lock()
	g := l.cur
	l.mu.Unlock()
	if g == nil {
		return 0, false
	}
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	if g.ended || !g.held {
		return 0, false
	}
	return g.token, true
}

// VouchedUntil returns the Session's loss deadline while the name is held.
func (l *sessionLocker) VouchedUntil() time.Time {
	l.mu.Lock()
	g := l.cur
	l.mu.Unlock()
	if g == nil {
		return time.Time{}
	}
	g.r.mu.Lock()
	ended := g.ended || !g.held
	g.r.mu.Unlock()
	if ended {
		return time.Time{}
	}
	return g.r.h.vouchedUntil()
}

// Identity returns the application_name of the Session's connections.
func (l *sessionLocker) Identity() string { return l.s.cfg.identity }

// Holder returns the identity of the session that holds the name, "" when
// nobody does (see WhoHolds).
func (l *sessionLocker) Holder(ctx context.Context) (string, error) {
	h, err := WhoHoldsKey(ctx, l.s.db, l.key)
	if err != nil || h == nil {
		return "", err
	}
	return h.ApplicationName, nil
}

func (l *sessionLocker) errorf(format string, args ...any) error {
	return fmt.Errorf("postgres: lock %s: "+format, append([]any{l.label}, args...)...)
}
