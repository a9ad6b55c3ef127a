package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// Acquire's errors that retrying cannot cure match locker.ErrConfig; the
// ones that time or an operator may cure do not.
func TestPermanentErrorsMatchErrConfig(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		var b [4]byte
		_, _ = rand.Read(b[:])
		suffix := hex.EncodeToString(b[:])
		role := "onlyone_pw_" + suffix
		if _, err := e.admin.Exec("CREATE ROLE " + role + " LOGIN PASSWORD 'right-one' IN ROLE onlyone_password"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.admin.Exec("DROP ROLE " + role) })
		nologin := "onlyone_nologin_" + suffix
		if _, err := e.admin.Exec("CREATE ROLE " + nologin + " NOLOGIN"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.admin.Exec("DROP ROLE " + nologin) })
		// A database the role may not connect to (REVOKE CONNECT).
		closed := "onlyone_closed_" + suffix
		if _, err := e.admin.Exec("CREATE DATABASE " + closed); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.admin.Exec("DROP DATABASE " + closed + " WITH (FORCE)") })
		if _, err := e.admin.Exec("REVOKE CONNECT ON DATABASE " + closed + " FROM PUBLIC"); err != nil {
			t.Fatal(err)
		}
		plain := "onlyone_plain_" + suffix
		if _, err := e.admin.Exec("CREATE ROLE " + plain + " LOGIN"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.admin.Exec("DROP ROLE " + plain) })
		for _, c := range []struct {
			what, url string
			permanent bool
		}{
			{"a database that does not exist", e.srv.URLWith("", "", "no_such_db_"+suffix), true},
			{"a role that does not exist", e.srv.URLWith("no_such_role_"+suffix, "", ""), true},
			{"a role that may not log in", e.srv.URLWith(nologin, "", ""), true},
			{"a database the role may not connect to", e.srv.URLWith(plain, "", closed), true},
			{"a wrong password (it may be being rotated)", e.srv.URLWith(role, "wrong-one", ""), false},
			{"nothing listening (the server may be restarting)", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5", false},
		} {
			l := newLocker(t, open(t, e.driver, c.url), uniqueName(t))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := l.Acquire(ctx)
			cancel()
			if err == nil {
				t.Fatalf("%s: Acquire succeeded", c.what)
			}
			if got := errors.Is(err, locker.ErrConfig); got != c.permanent {
				t.Errorf("%s: matches ErrConfig = %v, want %v: %v", c.what, got, c.permanent, err)
			}
			t.Logf("%s: %v", c.what, err)
		}

		// An Acquire cancelled while it waits is not a configuration error.
		name := uniqueName(t)
		holder := e.locker(t, name)
		if err := holder.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		err := e.locker(t, name).Acquire(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, locker.ErrConfig) {
			t.Fatalf("Acquire past its deadline = %v; want DeadlineExceeded, not ErrConfig", err)
		}
	})
}
