package leader

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/once"
)

// ErrTickTaken is matched by the error Claim returns on a node whose tick
// was already claimed by another node: skip the run here.
var ErrTickTaken = errors.New("leader: this tick already ran on another node")

// Ticks lets each tick of a scheduled job run on one node of the cluster:
// every node's scheduler fires, and the first to claim the tick runs it.
// The others — however late their tick fires, up to Window after the
// first — find the claim and skip.
//
// A lock alone does not do this: a lock held while a run lasts lets a
// node whose tick fires after the first node's run ended take the lock
// and run the job again (measured: 3 of 5 ticks ran more than once on
// three nodes). Ticks records each claim with package once, under a
// PostgreSQL lock on the job's name, by the server's clock, and releases
// the lock at once: the run itself holds no lock.
//
// Ticks must fire at nearly the same moment on every node: use cron
// schedules, or interval jobs started at a rounded time. Set Window to
// half the job's period: a node whose tick fires up to half a period
// after the first skips it, and the next tick is claimed afresh.
//
// A claimed tick counts as run even if the node that claimed it dies
// before or during the run: at most once, never twice (see package once).
// A Ticks may be used by many goroutines at once.
type Ticks struct {
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

// TickNamePrefix starts the names of the locks and ledger entries of
// Ticks: the job named key is claimed as TickNamePrefix + key.
const TickNamePrefix = "tick/"

// Claim claims the current tick of the job named key. It returns nil when
// this node claimed it (run the job), an error matching ErrTickTaken when
// another node did (skip it), or another error when the claim could not be
// made (skip it too: never run without a claim). It waits for the lock at
// most Window.
func (t *Ticks) Claim(ctx context.Context, key string) error {
	if t.DB == nil || t.Window <= 0 {
		return fmt.Errorf("leader: %w: Ticks needs DB and a positive Window", locker.ErrConfig)
	}
	name := TickNamePrefix + key
	l, err := postgres.New(t.DB, name, t.LockerOptions...)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, t.Window)
	defer cancel()
	if err := l.Acquire(actx); err != nil {
		return fmt.Errorf("leader: claiming a tick of %s: %w", key, err)
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
		return fmt.Errorf("leader: claiming a tick of %s: %w", key, err)
	}
	if !c.Won {
		return fmt.Errorf("%w: %s was claimed at %s", ErrTickTaken, key, c.Previous.Format(time.RFC3339Nano))
	}
	return nil
}
