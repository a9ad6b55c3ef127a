// Package pgtest gives the adapter modules' tests pools on the shared
// throwaway PostgreSQL server (internal/pglocal), logged in as a role with
// no privileges beyond a schema of its own, as on a managed server.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	_ "github.com/lib/pq"              // the "postgres" driver

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// Drivers are the database/sql drivers every test runs with.
var Drivers = []string{"pgx", "postgres"}

// URL returns the URL of a new role on the shared server that is neither
// superuser nor a member of pg_read_all_stats, and owns a schema of its
// name (first on its default search_path), as an administrator would give
// an application on PostgreSQL 15, where public is closed to ordinary
// roles. The URL carries the role's password: hand it to a child process
// on a pipe, never in argv or the environment. The test binary's TestMain
// must stop the server: see pglocal.Main.
func URL(t testing.TB) string {
	t.Helper()
	srv := pglocal.Shared(t)
	admin, err := srv.Open("pgx")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	warm.Do(func() { warmErr = waitOutQuarantine(admin) })
	if warmErr != nil {
		t.Fatal(warmErr)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	role, password := "adapter_"+hex.EncodeToString(b[:]), hex.EncodeToString(b[:])+"-pw"
	for _, stmt := range []string{
		"CREATE ROLE " + role + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '" + password + "' IN ROLE onlyone_password",
		"CREATE SCHEMA " + role + " AUTHORIZATION " + role,
	} {
		if _, err := admin.Exec(stmt); err != nil {
			t.Fatalf("preparing a role: %v", err)
		}
	}
	return srv.URLWith(role, password, "")
}

// Open returns a pool with driver on a new role (see URL), closed when t
// ends.
func Open(t testing.TB, driver string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, URL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var super bool
	if err := db.QueryRow("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").Scan(&super); err != nil || super {
		t.Fatalf("the test role is a superuser (%v) or cannot log in: %v", super, err)
	}
	return db
}

var (
	warm    sync.Once
	warmErr error
)

// waitOutQuarantine takes and releases a lock with the default settings
// once per test binary. A server started moments ago grants no lock until
// it has been up for SessionTimeout (the restart quarantine of package
// postgres): tests whose own deadlines are shorter than that start after it.
func waitOutQuarantine(db *sql.DB) error {
	l, err := postgres.New(db, "pgtest-warm-up")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Acquire(ctx); err != nil {
		return err
	}
	return l.Release(ctx)
}
