// Package fence makes the writes of a stale lock holder harmless, with
// fencing tokens checked by PostgreSQL.
//
// A lock cannot stop a holder that does not know it lost the lock: a
// process paused (SIGSTOP, a frozen VM, a long GC) past the moment the next
// holder took over resumes in the middle of its work; an operator's
// pg_terminate_backend frees a lock before its holder hears of it. What can
// stop such a holder is the resource it writes to. Every hold carries a
// token larger than all earlier ones (supervise.Token, locker.Token, or
// ONLYONE_FENCING_TOKEN under the CLI). The holder sends it with each write;
// Check, run in the same transaction as the write, records the largest
// token seen for the resource and refuses a smaller one. Once the new
// holder has written, the old one cannot: its transaction fails with
// ErrStale and rolls back, whatever the timing of its pauses.
//
// If the stale holder's transaction commits first, it was serialized
// before the new holder's: nothing is overwritten out of order. Its row
// lock makes the new holder wait for it, so keep guarded transactions
// short, and give the writers' sessions an idle_in_transaction_session_timeout.
//
// Tokens come from PostgreSQL transaction ids, which only grow on one
// server, across crashes. A failover to an asynchronous replica can lose
// the newest ones and hand them out again; with synchronous replication,
// or on one server, it cannot.
package fence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Table is the table Check and CreateTable use.
const Table = "onlyone_fence"

// ErrStale is matched by the error Check returns for a token smaller than
// one already recorded for the resource: a newer holder has written.
var ErrStale = errors.New("fence: stale fencing token: a newer holder has written")

// Execer is what CreateTable needs: a *sql.DB, *sql.Conn or *sql.Tx.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Querier is what Check needs: the *sql.Tx of the guarded write.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// CreateTable creates the table of newest tokens if it does not exist.
func CreateTable(ctx context.Context, db Execer) error {
	_, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+Table+` (
		resource   text PRIMARY KEY,
		token      bigint NOT NULL,
		written_at timestamptz NOT NULL DEFAULT now())`)
	if err != nil {
		return fmt.Errorf("fence: creating %s: %w", Table, err)
	}
	return nil
}

// checkSQL records the token unless a larger one is recorded; it returns a
// row only when the token was accepted. The row stays locked until the
// transaction ends, so that no newer holder can write in between.
const checkSQL = `INSERT INTO ` + Table + ` AS f (resource, token) VALUES ($1, $2)
	ON CONFLICT (resource) DO UPDATE SET token = EXCLUDED.token, written_at = now()
	WHERE f.token <= EXCLUDED.token
	RETURNING f.token`

// Check accepts token for resource if no larger token was recorded for
// it, and records it; otherwise it returns an error matching ErrStale. Call
// it inside the transaction of the write it guards, and roll back on error.
// The same holder may call it any number of times with its token.
func Check(ctx context.Context, tx Querier, resource string, token uint64) error {
	if token > 1<<63-1 {
		return fmt.Errorf("fence: token %d does not fit a bigint", token)
	}
	var got int64
	err := tx.QueryRowContext(ctx, checkSQL, resource, int64(token)).Scan(&got)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%w (resource %q, token %d)", ErrStale, resource, token)
	case err != nil:
		return fmt.Errorf("fence: checking token %d for %q: %w", token, resource, err)
	}
	return nil
}

// Write runs write in a transaction guarded by Check: it commits only if
// token is the newest seen for resource, and returns an error matching
// ErrStale, having written nothing, if a newer holder has written.
func Write(ctx context.Context, db *sql.DB, resource string, token uint64, write func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	defer tx.Rollback() // after Commit, a no-op
	if err := Check(ctx, tx, resource, token); err != nil {
		return err
	}
	if err := write(tx); err != nil {
		return err
	}
	return tx.Commit()
}
