package main

import (
	"context"
	"database/sql"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-co-op/gocron/v2"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/onlyone-go/onlyone/adapter/gocronlock"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	l, err := postgres.New(db, "scheduler-leader")
	if err != nil {
		log.Fatal(err)
	}
	el := gocronlock.NewElector(l, nil) // nil: a supervise.Supervisor at its defaults
	campaign := make(chan error, 1)
	go func() { campaign <- el.Run(ctx) }()

	s, err := gocron.NewScheduler(gocron.WithDistributedElector(el))
	if err != nil {
		log.Fatal(err)
	}
	_, err = s.NewJob(gocron.DurationJob(time.Minute), gocron.NewTask(el.Guard(func(ctx context.Context) error {
		return sendInvoices(ctx) // ctx ends if the lock is lost: stop there
	})))
	if err != nil {
		log.Fatal(err)
	}
	s.Start()
	<-ctx.Done()
	_ = s.Shutdown()
	if err := <-campaign; err != nil {
		log.Fatal(err)
	}
}

func sendInvoices(ctx context.Context) error { return nil }
