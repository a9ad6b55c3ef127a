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
	"golang.org/x/sync/errgroup"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	tenants := []string{"acme", "globex", "initech"} // or thousands: still two connections
	if err := run(ctx, db, tenants, follow); err != nil {
		log.Fatal(err)
	}
}

// follow is one tenant's worker: it runs until ctx ends.
func follow(ctx context.Context, tenant string) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
			// pull this tenant's changes from its upstream
		}
	}
}

// run runs work once per tenant across all replicas: each tenant on one
// replica at a time, the tenants spread evenly over the replicas, on two
// server connections per replica.
func run(ctx context.Context, db *sql.DB, tenants []string, work func(context.Context, string) error) error {
	s, err := postgres.NewSession(db)
	if err != nil {
		return err
	}
	defer s.Close() // after every supervisor below has stopped its worker
	g, ctx := errgroup.WithContext(ctx)
	for _, tenant := range tenants {
		l, err := s.Locker("tenant/" + tenant)
		if err != nil {
			return err
		}
		g.Go(func() error {
			return supervise.Run(ctx, l, func(ctx context.Context) error { return work(ctx, tenant) })
		})
	}
	return g.Wait()
}
