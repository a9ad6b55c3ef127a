package pglocal_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }

func TestStartStopRemovesEverything(t *testing.T) {
	pglocal.Shared(t) // skips or fails as the environment says
	if os.Getenv(pglocal.EnvURL) != "" {
		t.Skip("a server from " + pglocal.EnvURL + " is not started or stopped here")
	}
	// Only this process's directories: other test binaries run at once.
	mine := filepath.Join(os.TempDir(), fmt.Sprintf("onlyone-pglocal-%d-*", os.Getpid()))
	before, _ := filepath.Glob(mine)
	srv, err := pglocal.Start()
	if err != nil {
		t.Fatal(err)
	}
	db, err := srv.Open("pgx")
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := db.QueryRowContext(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	db.Close()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	after, _ := filepath.Glob(mine)
	if len(after) != len(before) {
		t.Fatalf("temporary directories before Start %v, after Stop %v", before, after)
	}
	if srv.Kind == "local" {
		db, _ := srv.Open("pgx")
		defer db.Close()
		if err := db.PingContext(context.Background()); err == nil {
			t.Fatal("the server still answers after Stop")
		}
	}
}

func TestRestartKeepsData(t *testing.T) {
	srv := pglocal.Shared(t)
	if srv.Kind != "local" {
		t.Skip("restart needs a local server")
	}
	ctx := context.Background()
	db, err := srv.Open("pgx")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS pglocal_restart (x int)"); err != nil {
		t.Fatal(err)
	}
	// Restart binds the port again: while the server is down, a port in
	// the kernel's ephemeral range may be given to some process's outgoing
	// connection, and the restart would fail.
	_, port, err := net.SplitHostPort(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if p, lo := mustAtoi(t, port), ephemeralLow(t); p >= lo {
		t.Fatalf("the server listens on port %d, in the ephemeral range (from %d)", p, lo)
	}
	if err := srv.Restart(true); err != nil {
		t.Fatal(err)
	}
	// The pool's connections died with the server; a new one is made.
	var n int
	for i := 0; i < 3; i++ {
		if err = db.QueryRowContext(ctx, "SELECT count(*) FROM pglocal_restart").Scan(&n); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestNotFoundSaysHowToGetOne(t *testing.T) {
	if !errors.Is(pglocal.ErrNotFound, pglocal.ErrNotFound) || !strings.Contains(pglocal.ErrNotFound.Error(), pglocal.EnvURL) {
		t.Fatalf("ErrNotFound = %q, want it to name %s", pglocal.ErrNotFound, pglocal.EnvURL)
	}
}

// ephemeralLow returns the first port of the kernel's ephemeral range.
func ephemeralLow(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skip(err)
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		t.Fatal(err)
	}
	return lo
}

func mustAtoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
