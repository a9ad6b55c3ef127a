package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// A Holder describes the session that holds a lock, as the server sees it.
type Holder struct {
	PID             int       // backend pid (pg_terminate_backend takes it)
	ApplicationName string    // the holder's identity (WithIdentity)
	ClientAddr      string    // host:port of the holder's connection; "" over a Unix socket
	SessionStart    time.Time // when the session connected; the lock was granted then or later
}

const holderSQL = `SELECT a.pid, coalesce(a.application_name, ''),
	coalesce(host(a.client_addr) || ':' || a.client_port, ''), a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
  AND l.granted`

// WhoHolds reports who holds the lock called name in db's database, or nil
// when nobody does. Seeing other sessions' application_name and address
// needs the pg_read_all_stats role or superuser; without it those fields
// are empty.
func WhoHolds(ctx context.Context, db *sql.DB, name string) (*Holder, error) {
	if name == "" {
		return nil, configError("empty lock name")
	}
	return WhoHoldsKey(ctx, db, Key(name))
}

const waitingSQL = `SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory'
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1
  AND NOT granted`

// Waiting reports how many sessions are waiting for the lock called name
// in db's database right now. A contender between two wait statements
// (see WithWaitChunk) is not counted for that moment.
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

// WhoHoldsKey is WhoHolds for a raw key.
func WhoHoldsKey(ctx context.Context, db *sql.DB, key int64) (*Holder, error) {
	if db == nil {
		return nil, configError("nil *sql.DB")
	}
	classid, objid := KeyParts(key)
	var h Holder
	err := db.QueryRowContext(ctx, holderSQL, int64(classid), int64(objid)).
		Scan(&h.PID, &h.ApplicationName, &h.ClientAddr, &h.SessionStart)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("postgres: who holds key %d: %w", key, err)
	}
	return &h, nil
}
