// Package gocronlock runs gocron v2 jobs on one node of a cluster, with
// onlyone locks. It adapts package leader (adapter/leader) to gocron's
// two distributed modes:
//
//   - an Elector (gocron.WithDistributedElector): one node leads, and only
//     its scheduler runs jobs; a crashed leader is replaced in
//     milliseconds (on PostgreSQL), and IsLeader answers nil only while
//     the lock is held and vouched for;
//   - a TickLocker (gocron.WithDistributedLocker): every node fires, and
//     each tick runs on the one node that claims it first.
//
// # Stopping a job when leadership is lost
//
// gocron asks its Elector only before a run: it cannot stop a run once
// started, and cancelling a job's context (gocron.WithContext) ends all
// its future runs too. Wrap tasks with Elector.Guard: a guarded task's
// ctx (gocron's job context) is also cancelled the moment the lock is
// lost, and the lock is kept until the task returns, within the
// supervisor's ShutdownTimeout.
//
// gocron's per-run lockers let a node whose tick fires after another
// node's run ended run it again; TickLocker does not (see leader.Ticks).
// Use cron schedules (gocron.CronJob) or duration jobs started at a
// rounded time (gocron.WithStartAt), so that every node's tick fires at
// nearly the same moment, as gocron's documentation advises.
package gocronlock

import (
	"context"

	"github.com/go-co-op/gocron/v2"

	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/supervise"
)

// An Elector is a gocron.Elector: see leader.Elector.
type Elector = leader.Elector

var _ gocron.Elector = (*Elector)(nil)

// NewElector returns an Elector that campaigns with l under the
// supervisor s (nil: a zero Supervisor); see leader.NewElector. Call its
// Run to campaign, pass it to gocron.WithDistributedElector, and wrap
// tasks with its Guard.
func NewElector(l locker.Locker, s *supervise.Supervisor) *Elector { return leader.NewElector(l, s) }

// A TickLocker is a gocron.Locker that runs each tick of a job on one
// node: the first to claim it with Ticks (see leader.Ticks). Lock returns
// an error matching leader.ErrTickTaken on the nodes that skip it.
type TickLocker struct {
	Ticks *leader.Ticks
}

var _ gocron.Locker = TickLocker{}

// Lock claims the current tick of the job named key (gocron passes the
// job's name): see leader.Ticks.Claim. The returned Lock's Unlock does
// nothing, as the claim is final.
func (t TickLocker) Lock(ctx context.Context, key string) (gocron.Lock, error) {
	if err := t.Ticks.Claim(ctx, key); err != nil {
		return nil, err
	}
	return noUnlock{}, nil
}

type noUnlock struct{}

func (noUnlock) Unlock(context.Context) error { return nil }
