// Package unittest shows how to test code that runs under a lock without a
// database: the code takes a locker.Locker; production passes
// postgres.New(db, name), the test passes a memory locker.
package unittest

import (
	"context"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/supervise"
)

// Reporter sends the daily report, on one replica only.
type Reporter struct {
	Lock locker.Locker                   // postgres.New(db, "daily-report") in production
	Send func(ctx context.Context) error // sends the report
}

// Run sends the report once, if and while this replica holds the lock.
func (r *Reporter) Run(ctx context.Context) error {
	s := &supervise.Supervisor{Restart: supervise.Transient}
	return s.Run(ctx, r.Lock, r.Send)
}
