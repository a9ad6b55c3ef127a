// Package postgres is a lock backend on PostgreSQL session advisory locks,
// using the application's own *sql.DB with any database/sql driver
// (tested with github.com/jackc/pgx/v5/stdlib and github.com/lib/pq).
//
// A Locker pins one connection of the pool per hold and takes
// pg_advisory_lock(Key(name)) on it. Waiting is a blocking lock statement,
// so when a holder's process dies the next waiter has the lock as soon as
// the server notices — within milliseconds — and when a holder releases,
// the hand-over is immediate.
//
// # Guarantees
//
// Every failure leads to the lock not being held, never to two holders:
//
//   - Acquire returns nil only after the server's pg_locks shows the lock
//     granted to the pinned session, on a primary. A cancelled or failed
//     Acquire destroys its connection: a driver's answer to a cancelled
//     statement is not trusted (lib/pq can report success without the
//     lock, pgx failure with it).
//   - A connection that held the lock or carries its session settings is
//     never returned to the pool; Release unlocks, then destroys it.
//   - A standby is refused (locker.ErrStandby): a lock taken there would
//     not exclude holders on the primary.
//   - A heartbeat every HeartbeatInterval checks that the session answers
//     with the backend pid it had at acquisition; a different pid means a
//     transaction-mode pooler moved the session (ErrBackendChanged).
//   - The holder gives the lock up — Lost closes — LossTimeout after the
//     send time of the last heartbeat that succeeded, on a timer that does
//     not wait for a heartbeat stuck on a silent network.
//   - The server gives the lock to nobody else before the holder has had
//     Grace to stop: the session sets idle_session_timeout,
//     idle_in_transaction_session_timeout and statement_timeout to
//     SessionTimeout ≥ LossTimeout + Grace + MinMargin, and the server ends
//     a session silent for that long. So a partitioned or frozen holder is
//     replaced after about SessionTimeout (10s with the defaults), and only
//     after it has given up.
//   - No waiter holds a snapshot longer than WaitChunk: a waiting lock
//     statement holds back VACUUM, so the wait is re-issued in chunks.
//
// # Limits
//
// What a lock alone cannot promise, and fencing tokens (Token, and package
// fence) can:
//
//   - A process paused (SIGSTOP, a VM freeze, a long GC or swap storm) for
//     longer than SessionTimeout resumes with its work briefly running
//     after the next holder started; its Lost closes the moment it runs
//     again.
//   - An operator's pg_terminate_backend frees the lock at once, while the
//     old holder learns of it only at its next heartbeat.
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
// handed the same id out again in 10 of 10 trials. A failover to an
// asynchronous replica can still lose recent ids.
//
// All contenders for a name must use the same database: advisory locks are
// per database. Holder discovery (WhoHolds) reads pg_locks and
// pg_stat_activity; the session's application_name is the node's identity
// (WithIdentity).
package postgres
