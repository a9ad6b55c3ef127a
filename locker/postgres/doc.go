// Package postgres is a lock backend on PostgreSQL session advisory locks,
// using the application's own *sql.DB with any database/sql driver
// (tested with github.com/jackc/pgx/v5/stdlib and github.com/lib/pq).
//
// A Locker pins one connection of the pool per hold and takes
// pg_advisory_lock(Key(name)) on it. Waiting is a blocking lock statement,
// so when a holder's process dies the next waiter has the lock as soon as
// the server notices — within milliseconds — and when a holder releases,
// the hand-over is immediate. Measured on a shared 2-core machine
// (TestCrashTakeover, TestGracefulHandover, 20 trials per driver): SIGKILL
// of the holder to the waiter's Acquire returning, p50 4.2ms pgx and 4.4ms
// lib/pq against 1.6ms and 2.4ms for a raw pg_advisory_lock; Release to
// the waiter's grant, p50 2.0–3.2ms. The paired benchmark
// (bench/RESULTS.md, runs 5 to 7: fsync on, under package supervise, to
// the next child's start) gives 5.1–5.8ms against 2.1–2.8ms for a raw
// lock (1.9–2.8×), and 2.4–3.9ms for a graceful hand-over. Where the
// difference goes (run 7): the holder's backend, busy with its heartbeat,
// notices that its client died only at its next connection check
// (client_connection_check_interval, every 2ms) — a raw lock that does
// only that is 2.1× a raw lock — and the spare connection the holder
// keeps for Release ends at the same moment and takes a core (a raw lock
// with only that: 2.0×).
//
// # Guarantees
//
// Every failure leads to the lock not being held, never to two holders:
//
//   - Acquire returns nil only on the server's own answer, from the pinned
//     session's backend, that pg_advisory_lock returned there, on a
//     primary: one statement whose row a driver cannot make up. pg_locks
//     is read on that session too, before the hold's fencing token is
//     given out (Token), and a hold whose lock it does not show is lost.
//     A cancelled or failed
//     Acquire destroys its connection: a driver's answer to a cancelled
//     statement is not trusted (lib/pq can report success without the
//     lock, pgx failure with it).
//   - A connection that held the lock or carries its session settings is
//     never returned to the pool; Release unlocks, then destroys it.
//   - A standby is refused (locker.ErrStandby): a lock taken there would
//     not exclude holders on the primary.
//   - The heartbeat keeps a statement in flight on the pinned session: it
//     waits HeartbeatInterval on the server (pg_sleep) and answers with the
//     backend pid it had at acquisition (a different pid means a
//     transaction-mode pooler moved the session: ErrBackendChanged). A
//     session that ends — an operator's pg_terminate_backend, a restart, a
//     crash-reset — is seen the moment its socket closes: measured, Lost
//     closed at worst 8–12ms after a terminate, over 8 trials per driver
//     spread over the interval (TestTerminateNoticed). The idle load is
//     one statement per HeartbeatInterval per holder; like any statement
//     it holds a snapshot while it runs (at most HeartbeatInterval), as a
//     short query each second would. Once it holds the lock, the session
//     sets client_connection_check_interval (2ms), so that the server,
//     busy with that statement, still notices within milliseconds a holder
//     whose process died (waiters do not pay for the checks).
//   - The holder gives the lock up — Lost closes — LossTimeout after the
//     send time of the last heartbeat that succeeded, on a timer that does
//     not wait for a heartbeat stuck on a silent network. A hold whose
//     session the server ended (a terminate, a restart) destroys its
//     connection at once: the pool gets its slot back without Release.
//     A hold lost for any other reason (no heartbeat answered in time)
//     keeps its session silent, and the lock with it, until Release or
//     Grace after the loss, whichever comes first: closing the socket
//     sooner would let the server grant the lock while the work still
//     stops (TestLossKeepsLockForGrace).
//   - The server gives the lock to nobody else before the holder has had
//     Grace to stop: the session sets idle_session_timeout,
//     idle_in_transaction_session_timeout and statement_timeout to
//     SessionTimeout ≥ LossTimeout + Grace + MinMargin, and the server ends
//     a session silent for that long. So a partitioned or frozen holder is
//     replaced after about SessionTimeout plus the heartbeat in flight
//     when it went silent (11s with the defaults; measured 10.97–11.00s),
//     and only after it has given up. The arithmetic counts the heartbeat's time in flight on the safe
//     side: the server's idle clock starts when a statement ends, never
//     before the send time the client counts from. The session also
//     raises tcp_user_timeout and the TCP keepalives where a server or
//     role set them so low that they could end a silent session before
//     SessionTimeout.
//   - Restarts, crash-resets and promotions free every lock at once,
//     while a holder cut off from the server may need LossTimeout to give
//     up and Grace to stop. So a grant counts only once the server has
//     been a writable primary for SessionTimeout: Acquire keeps the lock
//     and its heartbeat meanwhile, and returns when a heartbeat sent after
//     that moment has succeeded. What an unprivileged role can read, and
//     is used (measured on PostgreSQL 15 as a role with no privileges;
//     the same functions and views exist on 14 to 17, not measured here):
//     pg_postmaster_start_time() moves with a restart (fast or
//     immediate); pg_stat_bgwriter.stats_reset moves to the crash
//     recovery after a crash-reset (one backend killed, the postmaster
//     re-initialising), and after an immediate restart; a promoted standby
//     shows a WAL timeline newer than its last checkpoint's until its
//     first checkpoint on the new timeline, and then the checkpoint_time
//     (pg_control_checkpoint()) of its latest checkpoint is at or after
//     the promotion (measured: the first checkpoint after pg_promote has
//     timeline_id = prev_timeline_id, so that pair shows nothing). The session
//     itself is a bound too: restarts end every session, and a session
//     that saw a primary was set up after any promotion, so a waiter that
//     has waited SessionTimeout takes over a crashed holder in
//     milliseconds, as before. Measured with two supervise.Run replicas
//     whose child needs most of the Grace to stop, both drivers, restart
//     immediate, fast and crash-reset: 0 overlaps in 6 of 6 (6 of 6
//     overlapped without the quarantine), someone led again 2.9–3.0s after
//     the fault with SessionTimeout 2.6s (TestRestartNoOverlap).
//   - No waiter holds a snapshot longer than WaitChunk: a waiting lock
//     statement holds back VACUUM, so the wait is re-issued in chunks.
//   - Every catalog object is schema-qualified and the pinned session's
//     search_path is pg_catalog: a role's search_path cannot shadow
//     pg_locks or clock_timestamp(). Times the server measures are
//     clamped by what the client measured.
//
// # Limits
//
// What a lock alone cannot promise, and fencing tokens (Token, and package
// fence) can:
//
//   - freeze: a process paused (SIGSTOP, a VM freeze, a long GC or swap
//     storm) for longer than SessionTimeout resumes with its work briefly
//     running after the next holder started; its Lost closes the moment
//     it runs again.
//   - terminate: an operator's pg_terminate_backend frees the lock at
//     once; the old holder learns of it within milliseconds, but its work
//     may run on for as long as it takes to stop (at most Grace under
//     package supervise).
//
// These two windows are the only ones: a restart, a crash-reset and a
// promotion are not windows (see the quarantine above). The guarantees
// rest on assumptions the library cannot check from a session:
//
//   - Failover means the old primary's sessions are gone: its holders'
//     sessions ended (it crashed, was stopped or fenced off) no later than
//     the promotion. A failover tool that promotes a standby while the old
//     primary still serves its clients (split brain) lets both grant the
//     lock; nothing on the new server can tell.
//   - The server's wall clock does not step forward: PostgreSQL's timeouts
//     compare wall-clock times, so a step ends an idle session early by
//     its size (and shortens the quarantine). Keep the clock slewed (NTP,
//     chrony), not stepped.
//   - Nothing between client and server ends a silent session sooner than
//     SessionTimeout: a session-mode proxy's client idle or TCP timeout
//     (PgBouncer's client_idle_timeout, HAProxy's timeout client), or, on
//     the server's host, a kernel whose TCP gives up retransmitting sooner
//     (net.ipv4.tcp_retries2 of 4 or less) while tcp_user_timeout is 0.
//     Set such timeouts above SessionTimeout. (The session raises
//     tcp_user_timeout and the keepalives where they were set lower.)
//
// What else to know:
//
//   - The quarantine costs a wait: a grant on a server that restarted,
//     reset or was promoted less than SessionTimeout ago waits out the
//     rest of it; on a promoted server (until its next restart) a new
//     session's grant waits out SessionTimeout after each checkpoint; an
//     administrator's pg_stat_reset_shared('bgwriter') costs one window.
//     Where the role may not read pg_control_checkpoint() or
//     pg_stat_bgwriter, every new session's grant waits out SessionTimeout
//     (the Locker warns once).
//   - PostgreSQL older than 14 has no idle_session_timeout: a frozen or
//     partitioned holder keeps the lock until its TCP connection dies.
//     The Locker logs a warning.
//   - Through a transaction-mode pooler a session lock cannot work; the
//     Locker detects it and gives the lock up, but the lock may stay held
//     by the pooler's backend. Connect directly, or in session mode.
//   - If Release's context ends while the connection is stuck in the
//     driver (lib/pq ignores deadlines on a silent network), Release
//     returns an error; Lost is closed, and the server frees the lock
//     within SessionTimeout of the session's last statement.
//
// Every hold carries a fencing token (Token): a transaction id taken once
// the lock is granted and flushed to WAL with a transactional logical
// message (prefix "onlyone"), so that it is larger than every earlier
// token even after a crash. Without the flush, measured: a crash restart
// handed the same id out again in 10 of 10 trials. The session forces
// synchronous_commit to at least local where a database or role turned it
// off (TestTokensAcrossCrashesSyncCommitOff). A failover to an
// asynchronous replica can still lose recent ids.
//
// # Connections
//
// A holder pins one connection of the *sql.DB for as long as it holds the
// lock, and a waiter one while it waits. Release borrows a second one from
// the pool for a moment, to interrupt the heartbeat in flight
// (pg_cancel_backend) so that it can unlock at once; so that this costs
// the hand-over no new session, a holder makes sure, once it holds the
// lock, that the pool keeps one connection idle (opening one if none is,
// and the application may use it meanwhile). An Acquire cancelled while
// its backend waited borrows one too, to end that backend. With a pool of
// one (SetMaxOpenConns(1)) a Locker still works: Release then waits for
// the heartbeat to end by itself, at most HeartbeatInterval. The Locker
// logs a warning when it pins the last connection the pool allows: the
// application's own queries then wait until it is released. Give the
// locks a *sql.DB of their own when the application's pool is small.
//
// All contenders for a name must use the same database: advisory locks are
// per database. Holder discovery (WhoHolds) reads pg_locks and
// pg_stat_activity; the session's application_name is the node's identity
// (WithIdentity).
//
// # Many singletons
//
// A Locker costs a connection per name, held or waiting. For many names —
// a worker per tenant, per shard, per queue — use a Session: NewSession
// is one node's membership, Session.Locker a name on it (as etcd's
// concurrency.NewSession and NewMutex). A Session uses at most two pinned
// connections of the pool, whatever the number of names it holds or waits
// for, and no other:
//
//   - the holding connection is the hold of a presence lock (a key in a
//     reserved range, one per Session): it is set up, quarantined after a
//     restart and heartbeated exactly as a Locker's, and holds every name
//     the Session holds. Its heartbeat is still a statement in flight that
//     waits HeartbeatInterval on the server (by the server's clock), and
//     the wait is also the Session's watch over the others: in steps of
//     10ms it tries, in shared mode, the doorbell of the next live Session
//     (in the order of their ids, around a ring: each live Session is
//     watched by one other). A Session holds its own doorbell exclusively;
//     the try succeeds once that Session crashed or was cut off (the
//     server ended its session) or rang (it released names, and moved its
//     doorbell to a second key). The wait then ends at once and the same
//     statement goes on to unlock released names, take free ones (a
//     batched pg_try_advisory_lock, at most the Session's share) and read
//     the live Sessions (presence locks in pg_locks); a Session that
//     leaves free names it did not take rings in turn, passing them on.
//     When that connection ends, every name's Lost closes: the loss
//     deadline, the server-side bound and the quarantine are the
//     Session's, so they hold for every name.
//   - the poker, an idle connection, interrupts the holding connection's
//     wait (pg_cancel_backend, when and only when it sleeps) when a name
//     is released, so that the unlock and the ring follow at once rather
//     than at the next heartbeat. It holds no lock.
//
// Measured, 3 node processes × 300 names: the names of a SIGKILLed node
// ran elsewhere within 25–36ms; a closed Session's names were on another
// node within 35–50ms (TestSessionNodes). Now and then the last of them
// waits for a heartbeat instead (HeartbeatInterval): seen in about 1 of 10
// runs of TestSessionWatchesJoinerAtOnce before a Session that saw
// another leave looked again 20ms later (an ending backend releases its
// locks one lock partition at a time), and not since; the test asserts
// the first name only.
//
// So a node with one Session costs the server two connections: 3 replicas
// × any number of names = 6, where Lockers would pin 3 × names
// (TestSessionNodes counts every connection a node's pool opens; for 3
// nodes × 1,000 names, bench/MANY.md measured [2 2 2] at the start and
// after thousands of hand-overs). A Session that holds and
// waits for no name keeps no connection. (A supervisor asks who holds a
// name, through the pool, when it starts to wait: that is the
// application's query, not the Session's.)
//
// Idle, a Session sends one statement per HeartbeatInterval (its
// heartbeat, which watches too), whatever the number of names: 0.93 per
// second with the defaults, measured for 3 nodes × 1,000 names
// (bench/MANY.md). Watching costs the server a try-lock and a wake-up
// every 10ms per Session: the idle server CPU of a node's backends was
// 2.1–2.6% of a core in four runs, against 1.7–2.1% for the earlier
// design whose second connection waited on the doorbell (most of either
// is the holding backend's client_connection_check_interval). The wait
// holds a snapshot for at most HeartbeatInterval, as a plain Locker's
// heartbeat does.
//
// Spreading (WithSpread, on by default): a Session takes free names up to
// its share, ceil(names it contends for / live Sessions), and gives up
// what it holds beyond it — the extra names' Lost closes with the cause
// ErrShed, the supervisor stops their work and calls Release, and another
// Session takes them. The live Sessions counted are those that contend for
// the same names: that hold one of them, or show an interest in one (each
// Session keeps a shared lock on an interest key for the lowest name it
// wants that another session holds), or hold nothing yet (one that has
// just started), so Sessions of other services in the same database do
// not count once they hold their own names. A name that stays free for two heartbeats
// is taken whatever the share (no other Session wanted it) and not given
// up for ten heartbeats. To keep names where they started, turn spreading
// off.
//
// Limits: every advisory lock of every session of the server lives in
// its shared lock table, sized for max_locks_per_transaction ×
// (max_connections + background processes + max_prepared_transactions)
// entries — 64 × 122 = 7,808 with PostgreSQL 15's defaults — and it may
// grow into spare shared memory beyond that (measured: about 44,000 on a
// server with max_connections = 400 sized for 27,008). A Session uses 3
// or 4 entries of its own (presence, doorbell, interest), plus one per
// name held. For 10,000 names on a server
// with default settings set max_locks_per_transaction = 128 (a restart).
// When the table is full (SQLSTATE 53200), an Acquire fails with
// ErrLockTableFull and the names held stay held
// (TestSessionLockTableFull).
package postgres
