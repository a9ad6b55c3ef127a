// Command cleaner deletes expired sessions every -every, on exactly one
// replica at a time: the periodic job of the distributed-Elixir article,
// on PostgreSQL alone. Run as many replicas as you like:
//
//	DATABASE_URL=postgres://... go run ./examples/cleaner -every 10s
//
// Stop one with Ctrl-C and another takes over at once; kill -9 one and
// another takes over within milliseconds.
package main

import (
	"context"
	"database/sql"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

func main() {
	every := flag.Duration("every", 10*time.Second, "how often to clean")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL")) // the application's own pool
	if err != nil {
		log.Error("open", "err", err)
		os.Exit(1)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS example_sessions (
		id bigserial PRIMARY KEY, expires_at timestamptz NOT NULL)`); err != nil {
		log.Error("create table", "err", err)
		os.Exit(1)
	}

	l, err := postgres.New(db, "example-session-cleaner", postgres.WithLogger(log))
	if err != nil {
		log.Error("locker", "err", err)
		os.Exit(1)
	}
	s := &supervise.Supervisor{Logger: log}
	err = s.Run(ctx, l, func(ctx context.Context) error {
		log.Info("this replica cleans now")
		tick := time.NewTicker(*every)
		defer tick.Stop()
		for {
			res, err := db.ExecContext(ctx, "DELETE FROM example_sessions WHERE expires_at < now()")
			if err != nil {
				return err // the supervisor restarts the job, with backoff
			}
			n, _ := res.RowsAffected()
			log.Info("cleaned", "expired_sessions", n)
			select {
			case <-ctx.Done(): // lost the lock, or shutting down
				return nil
			case <-tick.C:
			}
		}
	})
	if err != nil {
		log.Error("supervisor", "err", err)
		os.Exit(1)
	}
}
