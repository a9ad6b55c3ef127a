package main

import (
	"context"
	"database/sql"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // or _ "github.com/lib/pq"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL")) // your application's pool
	if err != nil {
		log.Fatal(err)
	}
	l, err := postgres.New(db, "outbox-relay")
	if err != nil {
		log.Fatal(err)
	}

	// Runs on one replica at a time; restarted if it fails; stopped the
	// moment the lock is lost or the process is told to stop.
	relay := func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
				// move rows from the outbox table to the message broker
			}
		}
	}
	if err := supervise.Run(ctx, l, relay); err != nil {
		log.Fatal(err)
	}
}
