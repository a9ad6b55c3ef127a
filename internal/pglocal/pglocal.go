// Package pglocal finds or starts a throwaway PostgreSQL server for tests,
// the demo and the benchmarks.
//
// Start looks, in order, for:
//
//  1. a server named by ONLYONE_TEST_DATABASE_URL;
//  2. PostgreSQL binaries (initdb and postgres on PATH, or under
//     /usr/lib/postgresql/*/bin), started in a temporary directory on a free
//     loopback port — as the postgres user when the caller is root, since
//     initdb refuses to run as root;
//  3. a Docker engine, through github.com/ory/dockertest/v3.
//
// A local server is started with a parent-death signal, so that it stops
// even when the process that started it is killed, and directories left by
// such a process are removed by the next Start.
package pglocal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the driver pglocal itself uses
)

// EnvURL names the environment variable that points the tests at an
// existing server instead of starting one.
const EnvURL = "ONLYONE_TEST_DATABASE_URL"

// EnvRequire names the environment variable that, set to 1, makes tests
// that need PostgreSQL fail instead of skip when none can be found.
const EnvRequire = "ONLYONE_REQUIRE_POSTGRES"

// ErrNotFound is returned by Start when no way to reach PostgreSQL exists
// on this machine.
var ErrNotFound = errors.New("pglocal: no PostgreSQL found: set " + EnvURL +
	", install PostgreSQL (initdb, postgres; Debian: apt-get install postgresql) or run a Docker engine")

// A Server is a PostgreSQL server that tests may use freely.
type Server struct {
	// URL reaches the server as a superuser, in the form
	// postgres://user@host:port/dbname?sslmode=disable.
	URL string

	// Kind says how the server was found: "url", "local" or "docker".
	Kind string

	stop  func() error
	local *localServer // nil unless Kind is "local"
}

// Start finds or starts a server, in the order given in the package doc.
// It returns ErrNotFound when there is none to be had.
func Start() (*Server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return &Server{URL: u, Kind: "url", stop: func() error { return nil }}, nil
	}
	s, err := startLocal()
	if !errors.Is(err, errNoBinaries) {
		return s, err
	}
	s, err = startDocker()
	if !errors.Is(err, errNoDocker) {
		return s, err
	}
	return nil, ErrNotFound
}

// Stop stops a server that Start started and removes its files. It does
// nothing to a server found through ONLYONE_TEST_DATABASE_URL.
func (s *Server) Stop() error { return s.stop() }

// URLWith returns s.URL with its user, password and database replaced where
// the arguments are not empty.
func (s *Server) URLWith(user, password, dbname string) string {
	u, err := url.Parse(s.URL)
	if err != nil {
		return s.URL
	}
	if user != "" {
		if password != "" {
			u.User = url.UserPassword(user, password)
		} else {
			u.User = url.User(user)
		}
	}
	if dbname != "" {
		u.Path = "/" + dbname
	}
	return u.String()
}

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string {
	u, err := url.Parse(s.URL)
	if err != nil {
		return ""
	}
	return u.Host
}

// URLVia returns s.URL with its host:port replaced by addr: the URL of the
// server through a proxy listening at addr.
func (s *Server) URLVia(addr string) string {
	u, err := url.Parse(s.URL)
	if err != nil {
		return s.URL
	}
	u.Host = addr
	return u.String()
}

// Open opens a pool on s with the named database/sql driver ("pgx" or
// "postgres"; the caller imports the driver).
func (s *Server) Open(driver string) (*sql.DB, error) {
	return sql.Open(driver, s.URL)
}

// ping waits until url accepts queries, at most until ctx is done.
func ping(ctx context.Context, dsn string, exited <-chan struct{}) error {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err = db.PingContext(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pglocal: server not ready: %w", err)
		case <-exited:
			return errors.New("pglocal: server exited while starting")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Shared returns the server shared by every test of this test binary,
// starting it on first use. Where there is none it skips t, saying how to
// get one — or fails t when ONLYONE_REQUIRE_POSTGRES=1. The test binary's
// TestMain must stop it: see Main.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() {
		shared.srv, shared.err = Start()
		if shared.err == nil {
			shared.err = setup(shared.srv)
		}
	})
	switch {
	case errors.Is(shared.err, ErrNotFound) && os.Getenv(EnvRequire) != "1":
		t.Skipf("skipping: %v (set %s=1 to make this a failure)", shared.err, EnvRequire)
	case shared.err != nil:
		t.Fatalf("PostgreSQL is required here: %v", shared.err)
	}
	return shared.srv
}

// setup prepares a new server for the tests: a role group whose members
// must log in with a password (see pg_hba.conf in local.go).
func setup(s *Server) error {
	db, err := sql.Open("pgx", s.URL)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = db.ExecContext(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'onlyone_password') THEN
			CREATE ROLE onlyone_password NOLOGIN;
		END IF;
	END $$`)
	if err != nil {
		return fmt.Errorf("pglocal: setting up the server: %w", err)
	}
	return nil
}

// TestingM is what goleak.VerifyTestMain and Main share: *testing.M.
type TestingM interface{ Run() int }

// Main wraps m so that the shared server is stopped once the tests have
// run:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }
func Main(m TestingM) TestingM { return mainM{m} }

type mainM struct{ m TestingM }

func (m mainM) Run() int {
	code := m.m.Run()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pglocal:", err)
		}
	}
	return code
}
