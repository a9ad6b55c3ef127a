package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// noWaitTimeout bounds the Acquire of --no-wait, for when the lock was
// taken between the look at pg_locks and the lock statement.
const noWaitTimeout = 3 * time.Second

// A contender is the CLI's Locker: the postgres one, which says once who
// holds the lock it waits for, and under --no-wait does not wait.
type contender struct {
	*postgres.Locker
	db     *sql.DB
	name   string
	logger *slog.Logger
	noWait bool
	busy   context.CancelCauseFunc // ends the run, for --no-wait
	told   bool                    // the waiter said who holds the lock
}

// A busyError ends a --no-wait run: the lock is held elsewhere.
type busyError struct{ holder *postgres.Holder }

func (e *busyError) Error() string {
	if e.holder == nil || e.holder.ApplicationName == "" {
		return "the lock is held by another node"
	}
	return fmt.Sprintf("the lock is held by %s (backend pid %d)", e.holder.ApplicationName, e.holder.PID)
}

// Acquire is postgres.Locker's, with a look at the holder first.
func (c *contender) Acquire(ctx context.Context) error {
	if c.noWait || !c.told {
		h, err := postgres.WhoHolds(ctx, c.db, c.name)
		switch {
		case err != nil:
			c.logger.Debug("cannot tell who holds the lock", "lock", c.name, "err", err)
		case h != nil && c.noWait:
			err := &busyError{h}
			c.busy(err)
			return err
		case h != nil:
			c.told = true
			c.logger.Info("waiting for the lock", "lock", c.name, "holder", h.ApplicationName, "holder_pid", h.PID, "holder_client", h.ClientAddr)
		}
	}
	if !c.noWait {
		return c.Locker.Acquire(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, noWaitTimeout)
	defer cancel()
	err := c.Locker.Acquire(actx)
	if err != nil && actx.Err() != nil && ctx.Err() == nil {
		berr := &busyError{}
		c.busy(berr)
		return berr
	}
	return err
}
