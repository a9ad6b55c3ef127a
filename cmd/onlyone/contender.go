package main

import (
	"context"
	"fmt"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// noWaitTimeout bounds the Acquire of --no-wait, for when the lock was
// taken between the look at pg_locks and the lock statement.
const noWaitTimeout = 3 * time.Second

// A noWaitLocker is the postgres Locker of run --no-wait: when another
// node holds the lock, Acquire ends the run instead of waiting.
type noWaitLocker struct {
	*postgres.Locker
	busy context.CancelCauseFunc // ends the run
}

// A busyError ends a --no-wait run: the lock is held elsewhere.
type busyError struct{ holder string }

func (e *busyError) Error() string {
	if e.holder == "" {
		return "the lock is held by another node"
	}
	return "the lock is held by " + e.holder
}

// Acquire looks who holds the lock, and takes it only if nobody does.
func (c *noWaitLocker) Acquire(ctx context.Context) error {
	holder, _, err := locker.Holder(ctx, c.Locker)
	if err == nil && holder != "" {
		berr := &busyError{holder}
		c.busy(berr)
		return berr
	}
	actx, cancel := context.WithTimeout(ctx, noWaitTimeout)
	defer cancel()
	err = c.Locker.Acquire(actx)
	if err != nil && actx.Err() != nil && ctx.Err() == nil {
		berr := &busyError{}
		c.busy(berr)
		return fmt.Errorf("%w: %w", berr, err)
	}
	return err
}
