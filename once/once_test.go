package once_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/fence"
	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/once"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pglocal.Main(exampleM{m}))
}

var drivers = []string{"pgx", "postgres"}

func unique(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
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

// acquire takes a PostgreSQL lock for the test and releases it after.
func acquire(t *testing.T, db *sql.DB, name string) *postgres.Locker {
	t.Helper()
	l, err := postgres.New(db, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
	return l
}

// unprivileged makes a role with no privileges beyond LOGIN, and a schema
// in which it may create tables. It returns the role's URL and the schema.
func unprivileged(t *testing.T, srv *pglocal.Server, admin *sql.DB) (url, schema string) {
	t.Helper()
	role, password := unique("onlyone_once_"), unique("pw-")
	schema = role + "_jobs"
	for _, q := range []string{
		"CREATE ROLE " + role + " LOGIN PASSWORD '" + password + "' NOSUPERUSER NOCREATEDB NOCREATEROLE IN ROLE onlyone_password",
		"CREATE SCHEMA " + schema,
		"GRANT USAGE, CREATE ON SCHEMA " + schema + " TO " + role,
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = admin.Exec("DROP SCHEMA " + schema + " CASCADE")
		_, _ = admin.Exec("DROP ROLE " + role)
	})
	return srv.URLWith(role, password, ""), schema
}

func TestClaimOncePerPeriod(t *testing.T) {
	srv := shared(t)
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			admin := open(t, "pgx", srv.URL)
			url, schema := unprivileged(t, srv, admin)
			db := open(t, driver, url)
			g := &once.Ledger{DB: db, Table: schema + ".runs"}
			job := unique("nightly-")
			l := acquire(t, db, job)

			first, err := g.Claim(ctx, l, job, time.Hour)
			if err != nil || !first.Won || !first.Previous.IsZero() || first.At.IsZero() {
				t.Fatalf("first claim = %+v, %v; want won, no previous run", first, err)
			}
			second, err := g.Claim(ctx, l, job, time.Hour)
			if err != nil || second.Won || !second.Previous.Equal(first.At) {
				t.Fatalf("second claim = %+v, %v; want lost to the first (%v)", second, err, first.At)
			}
			if next := second.Next(time.Hour); !next.Equal(first.At.Add(time.Hour)) {
				t.Errorf("Next = %v, want %v", next, first.At.Add(time.Hour))
			}
			// A period that has passed: a new run.
			third, err := g.Claim(ctx, l, job, time.Microsecond)
			if err != nil || !third.Won || !third.Previous.Equal(first.At) || !third.At.After(first.At) {
				t.Fatalf("claim after the period = %+v, %v; want won, after %v", third, err, first.At)
			}
			last, ok, err := g.LastRun(ctx, job)
			if err != nil || !ok || !last.Equal(third.At) {
				t.Fatalf("LastRun = %v, %v, %v; want %v", last, ok, err, third.At)
			}
			// Both tables went to the role's schema.
			var n int
			if err := admin.QueryRow(`SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('runs', $2)`, schema, fence.Table).Scan(&n); err != nil || n != 2 {
				t.Fatalf("%d tables in %s, want runs and %s (%v)", n, schema, fence.Table, err)
			}
		})
	}
}

// fixed is a Locker that claims to hold the lock with a given token: a
// holder that lost its lock and does not know it yet.
type fixed struct {
	locker.Locker
	token uint64
}

func (f fixed) Token() (uint64, bool) { return f.token, true }

func TestStaleHolderCannotClaim(t *testing.T) {
	srv := shared(t)
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			db := open(t, driver, srv.URL)
			g := &once.Ledger{DB: db, Table: unique("runs_")}
			job := unique("job-")
			l := acquire(t, db, job)
			tok, _ := l.Token()
			if _, err := g.Claim(ctx, l, job, time.Microsecond); err != nil {
				t.Fatal(err)
			}
			_, err := g.Claim(ctx, fixed{l, tok - 1}, job, time.Microsecond)
			if !errors.Is(err, fence.ErrStale) {
				t.Fatalf("a claim with an older token = %v, want fence.ErrStale", err)
			}
			if last, _, _ := g.LastRun(ctx, job); last.IsZero() {
				t.Fatal("no run recorded")
			}
		})
	}
}

func TestClaimRefusals(t *testing.T) {
	srv := shared(t)
	db := open(t, "pgx", srv.URL)
	ctx := context.Background()
	reg := memory.New()
	notHeld := reg.Locker("x")
	held := reg.Locker("y")
	if err := held.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	defer held.Release(ctx)
	g := &once.Ledger{DB: db, Table: unique("runs_")}
	for _, tc := range []struct {
		what  string
		g     *once.Ledger
		l     locker.Locker
		name  string
		every time.Duration
		want  error
	}{
		{"not held", g, notHeld, "x", time.Minute, locker.ErrNotHeld},
		{"no tokens", g, struct{ locker.Locker }{held}, "y", time.Minute, locker.ErrConfig},
		{"empty name", g, held, "", time.Minute, locker.ErrConfig},
		{"zero period", g, held, "y", 0, locker.ErrConfig},
		{"bad table", &once.Ledger{DB: db, Table: "runs; DROP TABLE x"}, held, "y", time.Minute, locker.ErrConfig},
		{"no db", &once.Ledger{}, held, "y", time.Minute, locker.ErrConfig},
	} {
		c, err := tc.g.Claim(ctx, tc.l, tc.name, tc.every)
		if !errors.Is(err, tc.want) || c.Won {
			t.Errorf("%s: Claim = %+v, %v; want an error matching %v", tc.what, c, err, tc.want)
		}
	}
}

// On PostgreSQL 15 an ordinary role may not create tables in public: the
// error says so, and tables made for the role by an administrator work
// without CREATE.
func TestPrivileges(t *testing.T) {
	srv := shared(t)
	ctx := context.Background()
	admin := open(t, "pgx", srv.URL)
	url, schema := unprivileged(t, srv, admin)
	var version int
	if err := admin.QueryRow("SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			db := open(t, driver, url)
			job := unique("job-")
			l := acquire(t, db, job)
			if version >= 150000 {
				_, err := (&once.Ledger{DB: db, Table: "public." + unique("runs_")}).Claim(ctx, l, job, time.Minute)
				if err == nil || !strings.Contains(err.Error(), "privileges") {
					t.Fatalf("Claim in public as an ordinary role = %v, want a refusal that points at the privileges", err)
				}
			}
			// Made by the administrator; the role may use but not create.
			table := schema + "." + unique("made_")
			role := strings.SplitN(strings.TrimPrefix(url, "postgres://"), ":", 2)[0]
			for _, q := range []string{
				"CREATE TABLE " + table + " (name text PRIMARY KEY, last_run timestamptz NOT NULL, token bigint NOT NULL)",
				"CREATE TABLE IF NOT EXISTS " + schema + "." + fence.Table + " (resource text PRIMARY KEY, token bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now())",
				"GRANT SELECT, INSERT, UPDATE ON " + table + ", " + schema + "." + fence.Table + " TO " + role,
				"REVOKE CREATE ON SCHEMA " + schema + " FROM " + role,
			} {
				if _, err := admin.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			defer admin.Exec("GRANT CREATE ON SCHEMA " + schema + " TO " + role)
			c, err := (&once.Ledger{DB: db, Table: table}).Claim(ctx, l, job, time.Minute)
			if err != nil || !c.Won {
				t.Fatalf("Claim on tables made for the role = %+v, %v", c, err)
			}
		})
	}
}

// Nodes whose schedules fire at different moments, each taking the lock
// in turn: the job runs once.
func TestSkewedNodesRunOnce(t *testing.T) {
	srv := shared(t)
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			job, table := unique("report-"), unique("runs_")
			var ran, skipped atomic.Int32
			var wg sync.WaitGroup
			for i := 0; i < 3; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx := context.Background()
					db := open(t, driver, srv.URL)
					time.Sleep(time.Duration(i) * 50 * time.Millisecond) // skewed starts, not synchronisation
					l, err := postgres.New(db, job)
					if err == nil {
						err = l.Acquire(ctx)
					}
					if err != nil {
						t.Error(err)
						return
					}
					defer l.Release(ctx)
					c, err := (&once.Ledger{DB: db, Table: table}).Do(ctx, l, job, time.Minute, func(context.Context) error {
						ran.Add(1)
						time.Sleep(100 * time.Millisecond) // the job, long enough for the others to queue
						return nil
					})
					if err != nil {
						t.Error(err)
					}
					if !c.Won {
						skipped.Add(1)
					}
				}()
			}
			wg.Wait()
			if ran.Load() != 1 || skipped.Load() != 2 {
				t.Fatalf("ran %d times, skipped %d; want 1 and 2", ran.Load(), skipped.Load())
			}
		})
	}
}

// The per-tick use of the package doc: a scheduler fires every P on two
// nodes, the second a little late; claiming with every = P/2, each tick
// runs once, and the next tick runs again.
func TestPerTick(t *testing.T) {
	srv := shared(t)
	ctx := context.Background()
	db := open(t, "pgx", srv.URL)
	g := &once.Ledger{DB: db, Table: unique("runs_")}
	job := unique("tick-")
	reg := memory.New()
	const period = time.Second
	claim := func() bool {
		l := reg.Locker(job)
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		defer l.Release(ctx)
		c, err := g.Claim(ctx, l, job, period/2)
		if err != nil {
			t.Fatal(err)
		}
		return c.Won
	}
	tick := time.Now()
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(time.Until(tick.Add(period))) // the scheduler's next tick
			tick = time.Now()
		}
		first := claim()
		time.Sleep(50 * time.Millisecond) // the late node's skew
		second := claim()
		if !first || second {
			t.Fatalf("tick %d: the first node won %v, the late one %v; want only the first", i, first, second)
		}
	}
}
