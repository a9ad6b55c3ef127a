package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

var _ locker.Inspector = (*Locker)(nil)

// A Holder describes the session that holds a lock, as the server sees it.
//
// Any role may ask: pg_locks and the pid, role and application_name of
// every session are visible to all. PostgreSQL shows a session's address
// and start time only to its own role, to members of pg_read_all_stats and
// to superusers; for anyone else ClientAddr is "" and SessionStart is the
// zero time.
type Holder struct {
	PID             int    // backend pid (pg_terminate_backend takes it)
	ApplicationName string // the holder's identity (WithIdentity)
	Role            string // the role the holder's session logged in as

	// ClientAddr is the host:port of the holder's connection: "" over a
	// Unix socket, or when the server hides it from the asking role.
	ClientAddr string

	// SessionStart is when the holder's session started (connected): the
	// lock was granted then or later, so it is not when the hold began.
	// It is the zero time when the server hides it from the asking role.
	SessionStart time.Time
}

// holderSQL names every catalog object with its schema, so that a role's
// search_path cannot shadow one. backend_start and client_addr are NULL
// for another role's session unless the asking role may read all stats.
const holderSQL = `SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
	coalesce(pg_catalog.host(a.client_addr) || ':' || a.client_port, ''), a.backend_start
FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
  AND l.granted`

// WhoHolds reports who holds the lock called name in db's database, or nil
// when nobody does. It works for any role; see Holder for the fields the
// server hides from roles other than the holder's.
func WhoHolds(ctx context.Context, db *sql.DB, name string) (*Holder, error) {
	if name == "" {
		return nil, configError("empty lock name")
	}
	return WhoHoldsKey(ctx, db, Key(name))
}

// WhoHoldsKey is WhoHolds for a raw key.
func WhoHoldsKey(ctx context.Context, db *sql.DB, key int64) (*Holder, error) {
	if db == nil {
		return nil, configError("nil *sql.DB")
	}
	classid, objid := KeyParts(key)
	var (
		h     Holder
		start sql.NullTime
	)
	err := db.QueryRowContext(ctx, holderSQL, int64(classid), int64(objid)).
		Scan(&h.PID, &h.ApplicationName, &h.Role, &h.ClientAddr, &start)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("postgres: who holds key %d: %w", key, err)
	}
	if start.Valid {
		h.SessionStart = start.Time
	}
	return &h, nil
}

const waitingSQL = `SELECT count(*) FROM pg_catalog.pg_locks
WHERE locktype = 'advisory'
  AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1
  AND NOT granted`

// Waiting reports how many sessions are waiting for the lock called name
// in db's database right now. It works for any role. A contender between
// two wait statements (see WithWaitChunk) is not counted for that moment.
func Waiting(ctx context.Context, db *sql.DB, name string) (int, error) {
	if name == "" {
		return 0, configError("empty lock name")
	}
	return WaitingKey(ctx, db, Key(name))
}

// WaitingKey is Waiting for a raw key.
func WaitingKey(ctx context.Context, db *sql.DB, key int64) (int, error) {
	if db == nil {
		return 0, configError("nil *sql.DB")
	}
	classid, objid := KeyParts(key)
	var n int
	if err := db.QueryRowContext(ctx, waitingSQL, int64(classid), int64(objid)).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: who waits for key %d: %w", key, err)
	}
	return n, nil
}

// Holder returns the identity (application_name) of the session that holds
// l's lock, or "" when nobody does. When that session has no
// application_name, it returns "pid N". It asks the server once, through
// the pool (one connection, briefly), and implements locker.Inspector.
func (l *Locker) Holder(ctx context.Context) (string, error) {
	h, err := WhoHoldsKey(ctx, l.db, l.key)
	switch {
	case err != nil:
		return "", err
	case h == nil:
		return "", nil
	case h.ApplicationName == "":
		return fmt.Sprintf("pid %d", h.PID), nil
	}
	return h.ApplicationName, nil
}
