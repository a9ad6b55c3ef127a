package main

import (
	"context"
	"database/sql"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/hibiken/asynq"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// asynq's Scheduler enqueues each periodic task once per running
// scheduler: run one per cluster, on the node that holds the lock.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	l, err := postgres.New(db, "asynq-scheduler")
	if err != nil {
		log.Fatal(err)
	}
	err = supervise.Run(ctx, l, func(ctx context.Context) error {
		// A new Scheduler per hold: one that was shut down cannot start again.
		s := asynq.NewScheduler(asynq.RedisClientOpt{Addr: os.Getenv("REDIS_ADDR")}, nil)
		if _, err := s.Register("@every 1m", asynq.NewTask("report:hourly", nil)); err != nil {
			return err
		}
		if err := s.Start(); err != nil {
			return err
		}
		<-ctx.Done() // the lock was lost, or we are shutting down
		s.Shutdown()
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}
