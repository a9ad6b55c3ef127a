package postgres_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// TestUnprivilegedShadowedRole takes the lock as a role with no privileges
// whose search_path puts, before pg_catalog, a schema with a
// clock_timestamp() an hour ahead and an empty pg_locks: the Locker must
// use the catalog's own, take the lock, read when the server started (no
// warning that it cannot), vouch for no more than LossTimeout ahead, and
// confirm the lock in pg_locks before it hands out the fencing token.
func TestUnprivilegedShadowedRole(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		role := fmt.Sprintf("shadowed_%s", e.driver)
		for _, q := range []string{
			"DROP OWNED BY " + role + " CASCADE",
			"DROP SCHEMA IF EXISTS " + role + " CASCADE",
			"DROP ROLE IF EXISTS " + role,
			"CREATE ROLE " + role + " LOGIN",
			"CREATE SCHEMA " + role + " AUTHORIZATION " + role,
			`CREATE FUNCTION ` + role + `.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT pg_catalog.now() + interval '1 hour' $$`,
			`CREATE VIEW ` + role + `.pg_locks AS SELECT * FROM pg_catalog.pg_locks WHERE false`,
			"GRANT USAGE ON SCHEMA " + role + " TO PUBLIC",
			"ALTER ROLE " + role + " SET search_path = " + role + ", pg_catalog",
		} {
			if _, err := e.admin.Exec(q); err != nil && q[:4] != "DROP" {
				t.Fatalf("%s: %v", q, err)
			}
		}
		var super, stats bool
		db := open(t, e.driver, e.srv.URLWith(role, "", ""))
		if err := db.QueryRow(`SELECT rolsuper, pg_has_role('pg_read_all_stats', 'member') FROM pg_roles WHERE rolname = current_user`).Scan(&super, &stats); err != nil {
			t.Fatal(err)
		}
		var shadowed time.Time
		if err := db.QueryRow(`SELECT clock_timestamp()`).Scan(&shadowed); err != nil {
			t.Fatal(err)
		}
		if super || stats || time.Until(shadowed) < 30*time.Minute {
			t.Fatalf("the role is not what the test needs: superuser %v, pg_read_all_stats %v, clock_timestamp() %v", super, stats, shadowed)
		}
		logs := &logSink{}
		l := newLocker(t, db, uniqueName(t), append(fast, postgres.WithLogger(logs.logger()))...)
		ctx := context.Background()
		start := time.Now()
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		if until := l.VouchedUntil(); until.After(start.Add(600*time.Millisecond + time.Since(start))) {
			t.Fatalf("VouchedUntil %v is more than LossTimeout ahead", time.Until(until))
		}
		if pids := e.holders(t, l.Key()); len(pids) != 1 {
			t.Fatalf("holders %v, want one", pids)
		}
		// The hold's first statement reads pg_locks (the catalog's, not
		// the empty look-alike) before it hands out the token.
		if _, ok := l.Token(); !ok {
			t.Fatalf("no fencing token: the hold ended after its first statement: %v", l.Err())
		}
		if logs.contains("cannot read when the server last started") {
			t.Fatalf("an unprivileged role could not read when the server started: %s", logs)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// logSink collects a Locker's log lines.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) logger() *slog.Logger { return slog.New(slog.NewTextHandler(s, nil)) }

func (s *logSink) contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Contains(s.buf.String(), sub)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// TestTCPSettingsRaised gives a role TCP settings that could end a silent
// session before SessionTimeout: the Locker raises them on its session
// and says so. (The fault proxy acknowledges every byte, so the settings'
// effect itself cannot be shown through it.)
func TestTCPSettingsRaised(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		role := "tcp_" + e.driver
		for _, q := range []string{
			"DROP ROLE IF EXISTS " + role,
			"CREATE ROLE " + role + " LOGIN",
			"ALTER ROLE " + role + " SET tcp_user_timeout = '1s'",
			"ALTER ROLE " + role + " SET tcp_keepalives_idle = 1",
			"ALTER ROLE " + role + " SET tcp_keepalives_interval = 1",
			"ALTER ROLE " + role + " SET tcp_keepalives_count = 1",
		} {
			if _, err := e.admin.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		logs := &logSink{}
		l := newLocker(t, open(t, e.driver, e.srv.URLWith(role, "", "")), uniqueName(t), append(fast, postgres.WithLogger(logs.logger()))...)
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"tcp_user_timeout from 1000ms to 2200ms", "tcp_keepalives_idle from 1s to 3s"} {
			if !logs.contains(want) {
				t.Errorf("the log does not say %q:\n%s", want, logs)
			}
		}
		if err := l.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}
