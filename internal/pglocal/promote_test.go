package pglocal_test

import (
	"context"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

// TestFailover: rows committed on the primary right before the failover
// are on the promoted standby, which takes writes; the old primary no
// longer answers; a server that is not a standby cannot be promoted.
func TestFailover(t *testing.T) {
	if pglocal.Shared(t).Kind != "local" {
		t.Skip("a failover needs local servers")
	}
	primary, err := pglocal.Start() // its own: the failover stops it
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Stop()
	standby, err := primary.StartStandby()
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pdb, err := primary.Open("pgx")
	if err != nil {
		t.Fatal(err)
	}
	defer pdb.Close()
	sdb, err := standby.Open("pgx")
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()

	// Committed, and not waited for on the standby: the fast shutdown must
	// ship it.
	if _, err := pdb.ExecContext(ctx, "CREATE TABLE failover AS SELECT g FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	if err := primary.Failover(standby); err != nil {
		t.Fatal(err)
	}
	var inRecovery bool
	var n int
	if err := sdb.QueryRowContext(ctx, "SELECT pg_catalog.pg_is_in_recovery(), (SELECT count(*) FROM failover)").Scan(&inRecovery, &n); err != nil {
		t.Fatal(err)
	}
	if inRecovery || n != 1000 {
		t.Fatalf("after the failover the standby is in recovery: %v, has %d of 1000 rows", inRecovery, n)
	}
	if _, err := sdb.ExecContext(ctx, "INSERT INTO failover VALUES (0)"); err != nil {
		t.Fatalf("the promoted standby refuses a write: %v", err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if err := pdb.PingContext(pctx); err == nil {
		t.Fatal("the old primary still answers after the failover")
	}
	if err := standby.Promote(); err == nil {
		t.Fatal("Promote of a primary succeeded")
	}
}
