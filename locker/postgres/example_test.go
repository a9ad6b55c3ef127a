package postgres_test

import (
	"context"
	"database/sql"
	"log"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// A nightly job that must run on one replica: every replica runs this,
// and one at a time holds the lock.
func Example() {
	db, err := sql.Open("pgx", "postgres://app@db.internal/app") // the application's own pool
	if err != nil {
		log.Fatal(err)
	}
	l, err := postgres.New(db, "nightly-billing", postgres.WithIdentity("billing-7"))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := l.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	select {
	case <-l.Lost():
		log.Printf("stop: %v", l.Err())
	case <-time.After(time.Minute): // the work
	}
}

// Operators can ask who holds a lock.
func ExampleWhoHolds() {
	db, err := sql.Open("pgx", "postgres://app@db.internal/app")
	if err != nil {
		log.Fatal(err)
	}
	h, err := postgres.WhoHolds(context.Background(), db, "nightly-billing")
	switch {
	case err != nil:
		log.Fatal(err)
	case h == nil:
		log.Print("nobody holds nightly-billing")
	default:
		log.Printf("%s (pid %d, %s) since %v", h.ApplicationName, h.PID, h.ClientAddr, h.SessionStart)
	}
}

// A worker per tenant, on two server connections per replica whatever the
// number of tenants: every replica runs this, and each tenant runs on one
// replica at a time, the tenants spread evenly over the replicas. (Package
// supervise does the loop below for you, with restarts and a grace.)
func ExampleNewSession() {
	db, err := sql.Open("pgx", "postgres://app@db.internal/app")
	if err != nil {
		log.Fatal(err)
	}
	s, err := postgres.NewSession(db, postgres.WithIdentity("worker-3"))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for _, tenant := range []string{"acme", "globex", "initech"} {
		l, err := s.Locker("tenant/" + tenant)
		if err != nil {
			log.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l.Acquire(ctx) == nil {
				<-l.Lost() // work for the tenant until the name is lost or shed (ErrShed)
				_ = l.Release(ctx)
			}
		}()
	}
	wg.Wait()
	_ = s.Close()
}
