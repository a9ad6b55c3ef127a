package once_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/once"
)

// A nightly job on three replicas whose schedules fire at slightly
// different moments: each takes the lock in turn, and only the first runs
// the job. (The memory locker stands in for postgres.New(db, name), which
// hands out fencing tokens too.)
func Example() {
	db := exampleDB() // the application's own pool
	defer db.Close()
	ledger := &once.Ledger{DB: db}
	job := fmt.Sprintf("nightly-billing-%d", time.Now().UnixNano())
	reg := memory.New()
	for _, replica := range []string{"a", "b", "c"} {
		l := reg.Locker(job)
		ctx := context.Background()
		if err := l.Acquire(ctx); err != nil {
			panic(err)
		}
		c, err := ledger.Do(ctx, l, job, 24*time.Hour, func(ctx context.Context) error {
			fmt.Println("replica", replica, "runs the job")
			return nil
		})
		if err != nil {
			panic(err)
		}
		if !c.Won {
			fmt.Println("replica", replica, "skips it: it ran", c.At.Sub(c.Previous) < time.Minute, "moments ago")
		}
		_ = l.Release(ctx)
	}
	// Output:
	// replica a runs the job
	// replica b skips it: it ran true moments ago
	// replica c skips it: it ran true moments ago
}

// The server for the tests and the example: the tests' shared one, or one
// of the example's own when only the example runs.
var server struct {
	mu  sync.Mutex
	url string
	own *pglocal.Server
}

func shared(t *testing.T) *pglocal.Server {
	srv := pglocal.Shared(t)
	server.mu.Lock()
	server.url = srv.URL
	server.mu.Unlock()
	return srv
}

func exampleDB() *sql.DB {
	server.mu.Lock()
	defer server.mu.Unlock()
	if server.url == "" {
		srv, err := pglocal.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		server.own, server.url = srv, srv.URL
	}
	db, err := sql.Open("pgx", server.url)
	if err != nil {
		panic(err)
	}
	return db
}

// exampleM stops the example's own server, if it started one.
type exampleM struct{ m pglocal.TestingM }

func (e exampleM) Run() int {
	code := e.m.Run()
	if server.own != nil {
		_ = server.own.Stop()
	}
	return code
}
