// Package cronlock runs robfig/cron v3 jobs on one node of a cluster, with
// onlyone locks. It adapts package leader (adapter/leader) to cron's
// JobWrapper, in two ways:
//
//   - OnlyLeader: a job runs only on the node whose leader.Elector leads;
//   - OncePerTick: every node fires, and each tick runs on the one node
//     that claims it first (see leader.Ticks).
//
// cron's own SkipIfStillRunning and DelayIfStillRunning act within one
// process; chain them after these wrappers when runs must also not
// overlap locally.
//
// A cron.Job's Run takes no context, so a wrapped job cannot learn that
// leadership was lost while it runs. Make the job with Guarded instead:
// its ctx is cancelled the moment the lock is lost, and the lock is kept
// until it returns (within the supervisor's ShutdownTimeout).
package cronlock

import (
	"context"
	"errors"
	"log/slog"

	"github.com/robfig/cron/v3"

	"github.com/onlyone-go/onlyone/adapter/leader"
)

// OnlyLeader returns a JobWrapper that runs a job only while el leads
// (el.IsLeader returns nil); on other nodes the tick is skipped. Run el
// (el.Run) for as long as the cron runs.
//
//	c := cron.New(cron.WithChain(cronlock.OnlyLeader(el)))
func OnlyLeader(el *leader.Elector) cron.JobWrapper {
	return func(j cron.Job) cron.Job {
		return cron.FuncJob(func() {
			_ = el.Guard(func(context.Context) error { j.Run(); return nil })(context.Background())
		})
	}
}

// Guarded returns a Job that runs task only while el leads, with a ctx
// that is cancelled the moment the lock is lost; el's supervisor keeps
// the lock until task returns. Errors other than "not the leader" are
// logged to logger (slog.Default() if nil).
func Guarded(el *leader.Elector, logger *slog.Logger, task func(ctx context.Context) error) cron.Job {
	g := el.Guard(task)
	return cron.FuncJob(func() {
		if err := g(context.Background()); err != nil && !errors.Is(err, leader.ErrNotLeader) {
			orDefault(logger).Error("cronlock: job failed", "err", err)
		}
	})
}

// OncePerTick returns a JobWrapper that runs each tick of the job named
// key on the one node that claims it first with t (see leader.Ticks);
// the nodes that find it claimed skip it. A claim that fails for another
// reason (the database is down) skips the tick too, and is logged to
// logger (slog.Default() if nil): never run without a claim.
//
// The wrapper applies to every job of a cron.Cron's chain, and each job
// needs a key of its own: wrap jobs one by one,
//
//	c.AddJob("0 * * * * *", cronlock.OncePerTick(ticks, "billing", nil)(billingJob))
func OncePerTick(t *leader.Ticks, key string, logger *slog.Logger) cron.JobWrapper {
	return func(j cron.Job) cron.Job {
		return cron.FuncJob(func() {
			err := t.Claim(context.Background(), key)
			switch {
			case err == nil:
				j.Run()
			case !errors.Is(err, leader.ErrTickTaken):
				orDefault(logger).Warn("cronlock: tick skipped: the claim failed", "job", key, "err", err)
			}
		})
	}
}

func orDefault(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}
