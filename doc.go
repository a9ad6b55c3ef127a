// Package onlyone runs a piece of work on exactly one node of a cluster at
// a time, using only the PostgreSQL the service already has. This package
// holds no code: it is the overview, and the packages below do the work.
//
//	go get github.com/onlyone-go/onlyone
//
// The promise is that every failure — a database down, a partition, a
// crashed or frozen node, a lock taken away — leads to the work running 0
// times, never 2, and that a node's death hands the work over within
// milliseconds, not after a lease expires.
//
// # Packages
//
//   - [github.com/onlyone-go/onlyone/supervise] runs a function only while
//     a lock is held: it acquires, starts the function, cancels its
//     context the moment the lock is lost, waits for it before releasing,
//     and restarts it by policy. It serves its status over HTTP
//     (supervise.StatusHandler: 200 on the leader, 429 elsewhere). Start
//     here.
//   - [github.com/onlyone-go/onlyone/locker] is the contract between the
//     supervisor and a lock backend: Acquire, Lost, Release, with sentinel
//     errors and optional capabilities (grace, fencing tokens, who holds).
//   - [github.com/onlyone-go/onlyone/locker/postgres] is the backend on
//     PostgreSQL session advisory locks, on the application's own *sql.DB
//     with pgx's stdlib or lib/pq. Each hold pins one pooled connection,
//     and so does each waiter: size the pool for them.
//   - [github.com/onlyone-go/onlyone/locker/memory] is an in-process
//     backend for unit tests and single-process programs.
//   - [github.com/onlyone-go/onlyone/locker/lockertest] is the conformance
//     suite every backend passes, for third-party backends too.
//   - [github.com/onlyone-go/onlyone/fence] makes a stale holder's writes
//     harmless, by fencing token, for the windows a lock alone cannot
//     close (a process paused past its session, an operator's
//     pg_terminate_backend).
//   - Command onlyone (cmd/onlyone) runs any program as a cluster
//     singleton: onlyone run --name NAME -- COMMAND.
//
// Failures are never silent: a supervisor with no Logger writes its
// warnings to slog.Default(), and Run returns the cause when its context
// ends while acquisitions fail, or at once when retrying cannot help (a
// database or role that does not exist).
package onlyone
