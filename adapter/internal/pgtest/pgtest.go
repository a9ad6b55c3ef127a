// Package pgtest gives the adapter modules' tests pools on the shared
// throwaway PostgreSQL server (internal/pglocal), logged in as a role with
// no privileges at all, as on a managed server.
package pgtest

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	_ "github.com/lib/pq"              // the "postgres" driver

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

// Drivers are the database/sql drivers every test runs with.
var Drivers = []string{"pgx", "postgres"}

// Open returns a pool on the shared server with driver, logged in as a new
// role that is neither superuser nor a member of pg_read_all_stats. The
// pool is closed when t ends. The test binary's TestMain must stop the
// server: see pglocal.Main.
func Open(t testing.TB, driver string) *sql.DB {
	t.Helper()
	srv := pglocal.Shared(t)
	admin, err := srv.Open("pgx")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var b [6]byte
	_, _ = rand.Read(b[:])
	role, password := "adapter_"+hex.EncodeToString(b[:]), hex.EncodeToString(b[:])+"-pw"
	if _, err := admin.Exec("CREATE ROLE " + role + " LOGIN NOSUPERUSER PASSWORD '" + password + "' IN ROLE onlyone_password"); err != nil {
		t.Fatalf("creating a role: %v", err)
	}
	db, err := sql.Open(driver, srv.URLWith(role, password, ""))
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
