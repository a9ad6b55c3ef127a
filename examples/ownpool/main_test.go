package main

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }

// Two replicas of the service: the first leads every singleton, the second
// waits for every one. Each pins exactly one lock connection per
// singleton, and the application's queries never wait for the locks.
func TestLocksHaveAPoolOfTheirOwn(t *testing.T) {
	srv := pglocal.Shared(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	type replica struct {
		app, locks *sql.DB
		done       chan error
	}
	var replicas []replica
	defer func() {
		cancel()
		for _, r := range replicas {
			if err := <-r.done; err != nil {
				t.Error(err)
			}
			r.app.Close()
			r.locks.Close()
		}
	}()
	start := func() replica {
		app, locks, err := open(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		r := replica{app, locks, make(chan error, 1)}
		go func() { r.done <- run(ctx, log, app, locks) }()
		replicas = append(replicas, r)
		return r
	}
	inUse := func(db *sql.DB, want int, what string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for db.Stats().InUse != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d lock connections in use, want %d", what, db.Stats().InUse, want)
			}
			time.Sleep(10 * time.Millisecond) // database/sql has no event for a pool's size
		}
	}

	leader := start()
	for _, name := range singletons {
		waitHeld(t, leader.app, name)
	}
	inUse(leader.locks, len(singletons), "the leader of every singleton")

	standby := start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := 0
		for _, name := range singletons {
			w, err := postgres.Waiting(ctx, leader.app, name)
			if err != nil {
				t.Fatal(err)
			}
			n += w
		}
		if n == len(singletons) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d singletons have a waiter", n, len(singletons))
		}
		time.Sleep(10 * time.Millisecond)
	}
	inUse(standby.locks, len(singletons), "the replica that waits for every singleton")

	// Both replicas' application pools answer at once, although every
	// lock connection either holds or waits.
	for _, r := range []replica{leader, standby} {
		qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
		var one int
		err := r.app.QueryRowContext(qctx, "SELECT 1").Scan(&one)
		qcancel()
		if err != nil {
			t.Fatalf("an application query while the locks hold and wait: %v", err)
		}
	}
}

func waitHeld(t *testing.T, db *sql.DB, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		h, err := postgres.WhoHolds(context.Background(), db, name)
		if err != nil {
			t.Fatal(err)
		}
		if h != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nobody holds %s", name)
		}
		time.Sleep(10 * time.Millisecond) // no event from the server for a grant
	}
}
