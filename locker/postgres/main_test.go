package postgres_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode)) // a holder process for the crash and freeze tests
	}
	goleak.VerifyTestMain(pglocal.Main(m))
}

// drivers are the database/sql drivers every test runs with: pgx's stdlib
// and lib/pq, under their registered names.
var drivers = []string{"pgx", "postgres"}

// env is one test's view of the server through one driver.
type env struct {
	srv    *pglocal.Server
	driver string
	db     *sql.DB // the user's pool, which the lockers use
	admin  *sql.DB // a separate pool, to look at the server
}

// forEachDriver runs f once per driver, as subtests.
func forEachDriver(t *testing.T, f func(t *testing.T, e *env)) {
	srv := pglocal.Shared(t)
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			f(t, newEnv(t, srv, d, srv.URL))
		})
	}
}

func newEnv(t *testing.T, srv *pglocal.Server, driver, url string) *env {
	t.Helper()
	e := &env{srv: srv, driver: driver, db: open(t, driver, url), admin: open(t, "pgx", srv.URL)}
	return e
}

func open(t *testing.T, driver, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// fast are settings that keep fault tests short: a frozen or partitioned
// holder is replaced after 2.2s.
var fast = []postgres.Option{
	postgres.WithHeartbeatInterval(200 * time.Millisecond),
	postgres.WithLossTimeout(600 * time.Millisecond),
	postgres.WithGrace(600 * time.Millisecond),
	postgres.WithSessionTimeout(2200 * time.Millisecond),
	postgres.WithWaitChunk(500 * time.Millisecond),
}

func (e *env) locker(t *testing.T, name string, opts ...postgres.Option) *postgres.Locker {
	t.Helper()
	return newLocker(t, e.db, name, opts...)
}

func newLocker(t *testing.T, db *sql.DB, name string, opts ...postgres.Option) *postgres.Locker {
	t.Helper()
	l, err := postgres.New(db, name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
	return l
}

// uniqueName returns a lock name no other test uses.
func uniqueName(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return strings.ReplaceAll(t.Name(), "/", ".") + "." + hex.EncodeToString(b[:])
}

// holders returns the pids of the sessions that hold key.
func (e *env) holders(t *testing.T, key int64) []int {
	t.Helper()
	return holdersOn(t, e.admin, key)
}

// holdersOn is holders, asked on q: a connection taken beforehand, where
// a new one could not be opened (a full lock table).
func holdersOn(t *testing.T, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, key int64) []int {
	t.Helper()
	classid, objid := postgres.KeyParts(key)
	rows, err := q.QueryContext(context.Background(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory'
		AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 AND granted`, int64(classid), int64(objid))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var pids []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// waiting reports whether some session waits for key.
func (e *env) waiting(t *testing.T, key int64) bool {
	t.Helper()
	n, err := postgres.WaitingKey(context.Background(), e.admin, key)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// terminate ends the session of the holder of key, as an operator would.
func (e *env) terminate(t *testing.T, key int64) {
	t.Helper()
	pids := e.holders(t, key)
	if len(pids) != 1 {
		t.Fatalf("holders of key %d: %v, want one", key, pids)
	}
	if _, err := e.admin.Exec("SELECT pg_terminate_backend($1)", pids[0]); err != nil {
		t.Fatal(err)
	}
}

// eventually polls the server until cond holds, for at most d: the server
// sends no event for what these tests wait on (a session ending, a lock
// granted), so they look, often, for a bounded time.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ownServer starts a server for t alone, which t may restart, crash and
// promote a standby of, and stops it when t ends.
func ownServer(t *testing.T) *pglocal.Server {
	t.Helper()
	pglocal.Shared(t) // skips or fails as the environment says
	srv, err := pglocal.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	if srv.Kind != "local" {
		t.Skipf("skipping: restarting the server needs local PostgreSQL binaries, not a %s server", srv.Kind)
	}
	return srv
}

// acquireAsync starts l.Acquire and returns a channel that receives the
// time it returned; a failure fails t.
func acquireAsync(t *testing.T, l *postgres.Locker) <-chan time.Time {
	res := make(chan time.Time, 1)
	go func() {
		if err := l.Acquire(context.Background()); err != nil {
			t.Error(err)
		}
		res <- time.Now()
	}()
	return res
}
