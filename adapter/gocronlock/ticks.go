package gocronlock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-co-op/gocron/v2"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/once"
)

// ErrTickTaken is matched by the error Lock returns on a node whose tick
// was already claimed by another node: gocron then skips the run here.
var ErrTickTaken = errors.New("gocronlock: this tick already ran on another node")

// A TickLocker is a gocron.Locker that runs each tick of a job on one node
// of the cluster: every node's scheduler fires, and the first to claim the
// tick runs it. The others — however late their tick fires, up to Window
// after the first — find the claim and skip.
//
// A lock alone does not do this: gocron's per-run lockers are held while a
// run lasts, so a node whose tick fires after the first node's run ended
// takes the lock and runs the job again. A TickLocker records each claim
// with package once, under a PostgreSQL lock on the job's name, by the
// server's clock, and releases the lock at once: the run itself holds no
// lock, and gocron's Unlock does nothing.
//
// Ticks must fire at nearly the same moment on every node: use cron
// schedules (gocron.CronJob), or duration jobs started at a rounded time
// (gocron.WithStartAt), as gocron's own documentation advises. Set Window
// to half the job's period: a node whose tick fires up to half a period
// after the first skips it, and the next tick is claimed afresh.
//
// A claimed tick counts as run even if the node that claimed it dies
// before or during the run: at most once, never twice (see package once).
type TickLocker struct {
	// DB reaches the PostgreSQL database of the locks and of the ledger.
	// Required.
	DB *sql.DB

	// Window: a claim less than Window ago, by any node, makes a tick
	// skip. Required; half the job's period is the usual choice.
	Window time.Duration

	// Ledger records the claims. Default: a once.Ledger on DB with its
	// default table (see package once for the tables and privileges).
	Ledger *once.Ledger

	// LockerOptions are passed to postgres.New for the lock taken while
	// claiming.
	LockerOptions []postgres.Option

	once   sync.Once
	ledger *once.Ledger
}

var _ gocron.Locker = (*TickLocker)(nil)

// LockNamePrefix starts the names of the locks and ledger entries of a
// TickLocker: the job named key is claimed as LockNamePrefix + key.
const LockNamePrefix = "gocron/"

// Lock claims the current tick of the job named key. It returns a
// gocron.Lock when this node claimed it (run the job), an error matching
// ErrTickTaken when another node did (skip it), or another error when the
// claim could not be made (skip it too: never run without a claim).
// It waits for the lock at most Window.
func (t *TickLocker) Lock(ctx context.Context, key string) (gocron.Lock, error) {
	if t.DB == nil || t.Window <= 0 {
		return nil, fmt.Errorf("gocronlock: %w: TickLocker needs DB and a positive Window", locker.ErrConfig)
	}
	name := LockNamePrefix + key
	l, err := postgres.New(t.DB, name, t.LockerOptions...)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, t.Window)
	defer cancel()
	if err := l.Acquire(actx); err != nil {
		return nil, fmt.Errorf("gocronlock: claiming a tick of %s: %w", key, err)
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer rcancel()
		_ = l.Release(rctx)
	}()
	t.once.Do(func() {
		t.ledger = t.Ledger
		if t.ledger == nil {
			t.ledger = &once.Ledger{DB: t.DB}
		}
	})
	c, err := t.ledger.Claim(actx, l, name, t.Window)
	if err != nil {
		return nil, fmt.Errorf("gocronlock: claiming a tick of %s: %w", key, err)
	}
	if !c.Won {
		return nil, fmt.Errorf("%w: %s was claimed at %s", ErrTickTaken, key, c.Previous.Format(time.RFC3339Nano))
	}
	return noUnlock{}, nil
}

// noUnlock is the gocron.Lock of a claimed tick: there is nothing to
// unlock, as the claim is final.
type noUnlock struct{}

func (noUnlock) Unlock(context.Context) error { return nil }
