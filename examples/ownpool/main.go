// Command ownpool runs three singletons — an outbox relay, a cleaner and a
// report — and gives their locks a small pool of their own, so that the
// locks can never starve the application's queries, nor the application's
// queries the locks:
//
//	DATABASE_URL=postgres://... go run ./examples/ownpool
//
// The arithmetic: a Locker pins one connection while it holds its lock,
// and one while it waits for it, for as long as it does. So a replica with
// N singletons pins N connections whether it leads or waits. Briefly, a
// Locker may take one more: to end the server-side wait of a cancelled
// Acquire, and for the one question a supervisor asks when it starts to
// wait (who holds the lock). A pool of N + 1 is enough for the locks; the
// application's queries go to a pool of their own.
package main

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"golang.org/x/sync/errgroup"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// singletons are the names of the work this service runs on one replica.
var singletons = []string{"outbox-relay", "session-cleaner", "daily-report"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	app, locks, err := open(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Error("open", "err", err)
		os.Exit(1)
	}
	defer app.Close()
	defer locks.Close()
	if err := run(ctx, log, app, locks); err != nil {
		log.Error("run", "err", err)
		os.Exit(1)
	}
}

// open returns the application's pool and a small one for the locks.
func open(url string) (app, locks *sql.DB, err error) {
	app, err = sql.Open("pgx", url) // the application's own pool, sized for its queries
	if err != nil {
		return nil, nil, err
	}
	app.SetMaxOpenConns(4)

	locks, err = sql.Open("pgx", url) // the locks' own: one per singleton, plus one
	if err != nil {
		app.Close()
		return nil, nil, err
	}
	locks.SetMaxOpenConns(len(singletons) + 1)
	locks.SetMaxIdleConns(1) // held and waiting connections are never idle; see the package doc
	return app, locks, nil
}

// run supervises every singleton until ctx ends. The work queries the
// application's pool; only the locks use the locks' pool.
func run(ctx context.Context, log *slog.Logger, app, locks *sql.DB) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, name := range singletons {
		l, err := postgres.New(locks, name)
		if err != nil {
			return err
		}
		s := &supervise.Supervisor{Logger: log.With("singleton", name)}
		g.Go(func() error {
			return s.Run(ctx, l, func(ctx context.Context) error {
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				for {
					var now time.Time
					if err := app.QueryRowContext(ctx, "SELECT now()").Scan(&now); err != nil && ctx.Err() == nil {
						return err
					}
					select {
					case <-ctx.Done():
						return nil
					case <-tick.C:
					}
				}
			})
		})
	}
	return g.Wait()
}
