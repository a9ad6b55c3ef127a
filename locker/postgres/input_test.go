package postgres_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

func TestNewRejectsBadInput(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://nobody@127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := time.Second
	for _, tc := range []struct {
		name  string
		db    *sql.DB
		lock  string
		opts  []postgres.Option
		field string // what the error must name
	}{
		{"nil db", nil, "x", nil, "nil *sql.DB"},
		{"empty name", db, "", nil, "empty lock name"},
		{"zero heartbeat", db, "x", []postgres.Option{postgres.WithHeartbeatInterval(0)}, "HeartbeatInterval"},
		{"negative loss", db, "x", []postgres.Option{postgres.WithLossTimeout(-s)}, "LossTimeout"},
		{"zero grace", db, "x", []postgres.Option{postgres.WithGrace(0)}, "Grace"},
		{"negative chunk", db, "x", []postgres.Option{postgres.WithWaitChunk(-s)}, "WaitChunk"},
		{"loss within a heartbeat", db, "x", []postgres.Option{postgres.WithHeartbeatInterval(2 * s), postgres.WithLossTimeout(2 * s)}, "LossTimeout"},
		{"loss under two heartbeats", db, "x", []postgres.Option{postgres.WithHeartbeatInterval(2 * s), postgres.WithLossTimeout(3 * s)}, "2.5 × HeartbeatInterval"},
		// Exactly two: the next answer comes two intervals and two round
		// trips after the last good heartbeat was sent, past the deadline.
		{"loss of exactly two heartbeats", db, "x", []postgres.Option{postgres.WithHeartbeatInterval(s), postgres.WithLossTimeout(2 * s)}, "2.5 × HeartbeatInterval"},
		{"server bound too short", db, "x", []postgres.Option{postgres.WithSessionTimeout(8 * s)}, "SessionTimeout"},
		{"chunk beyond the bound", db, "x", []postgres.Option{postgres.WithWaitChunk(20 * s)}, "WaitChunk"},
		{"identity too long", db, "x", []postgres.Option{postgres.WithIdentity(strings.Repeat("n", 64))}, "Identity"},
		{"identity not ASCII", db, "x", []postgres.Option{postgres.WithIdentity("nœud-1")}, "Identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := postgres.New(tc.db, tc.lock, tc.opts...)
			if !errors.Is(err, locker.ErrConfig) || l != nil {
				t.Fatalf("New = %v, %v; want nil and an error matching ErrConfig", l, err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not name %s", err, tc.field)
			}
		})
	}
	if _, err := postgres.NewKey(nil, 42); !errors.Is(err, locker.ErrConfig) {
		t.Fatalf("NewKey(nil) = %v, want ErrConfig", err)
	}
	if _, err := postgres.New(db, "x", postgres.WithSessionTimeout(9*s)); err != nil {
		t.Fatalf("the tightest valid bound (3s + 5s + %v) was refused: %v", postgres.MinMargin, err)
	}
}

func TestUnreachableServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			db := open(t, d, "postgres://nobody@"+addr+"/none?sslmode=disable&connect_timeout=5")
			l := newLocker(t, db, "unreachable")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := l.Acquire(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("Acquire = %v (ctx %v), want a prompt connection error", err, ctx.Err())
			}
			if !strings.Contains(err.Error(), "connecting") {
				t.Errorf("error %q does not say it could not connect", err)
			}
			select {
			case <-l.Lost():
			default:
				t.Fatal("Lost is open after a failed Acquire")
			}
		})
	}
}

func TestWrongPasswordNotEchoed(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		var b [6]byte
		_, _ = rand.Read(b[:])
		role := "onlyone_pw_" + hex.EncodeToString(b[:3])
		good, bad := "right-"+hex.EncodeToString(b[:]), "Wr0ng-S3cret-"+hex.EncodeToString(b[:])
		if _, err := e.admin.Exec("CREATE ROLE " + role + " LOGIN PASSWORD '" + good + "' IN ROLE onlyone_password"); err != nil {
			t.Fatal(err)
		}
		defer e.admin.Exec("DROP ROLE " + role)
		db := open(t, e.driver, e.srv.URLWith(role, bad, ""))
		l := newLocker(t, db, uniqueName(t))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := l.Acquire(ctx)
		if err == nil {
			if e.srv.Kind != "local" {
				t.Skip("this server trusts every connection: no password to refuse")
			}
			t.Fatal("Acquire with a wrong password succeeded")
		}
		if strings.Contains(err.Error(), bad) {
			t.Fatalf("the error shows the password: %v", err)
		}
		t.Logf("error: %v", err)
	})
}

func TestStandbyRefused(t *testing.T) {
	srv := pglocal.Shared(t)
	if srv.Kind != "local" {
		t.Skipf("a standby needs local PostgreSQL binaries (server kind %q); the check is the one pg_is_in_recovery() makes on a primary", srv.Kind)
	}
	standby, err := srv.StartStandby()
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Stop()
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		primary := e.locker(t, name)
		if err := primary.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		// The fact that makes the check necessary: on a hot standby a raw
		// advisory lock succeeds although the primary holds the same key.
		sdb := open(t, e.driver, standby.URL)
		var got bool
		if err := sdb.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", postgres.Key(name)).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if !got {
			t.Fatal("the standby refused a raw advisory lock; the premise of this test changed")
		}
		l := newLocker(t, sdb, name)
		err := l.Acquire(ctx)
		if !errors.Is(err, locker.ErrStandby) {
			t.Fatalf("Acquire on a standby = %v, want ErrStandby", err)
		}
		t.Logf("error: %v", err)
		if err := primary.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestKeyMatchesDocumentedSQL(t *testing.T) {
	srv := pglocal.Shared(t)
	db := open(t, "pgx", srv.URL)
	for _, name := range []string{"nightly-billing", "", "ü", strings.Repeat("x", 300)} {
		var k int64
		err := db.QueryRow(`SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint`, name).Scan(&k)
		if err != nil {
			t.Fatal(err)
		}
		if k != postgres.Key(name) {
			t.Errorf("Key(%q) = %d, SQL says %d", name, postgres.Key(name), k)
		}
	}
	if c, o := postgres.KeyParts(-1); c != 0xFFFFFFFF || o != 0xFFFFFFFF {
		t.Errorf("KeyParts(-1) = %x, %x", c, o)
	}
}

func TestWhoHolds(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		l := e.locker(t, name, postgres.WithIdentity("billing-node-7"))
		if h, err := postgres.WhoHolds(ctx, e.db, name); h != nil || err != nil {
			t.Fatalf("WhoHolds of a free lock = %+v, %v; want nil, nil", h, err)
		}
		before := time.Now()
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		h, err := postgres.WhoHolds(ctx, e.db, name)
		if err != nil || h == nil {
			t.Fatalf("WhoHolds = %v, %v", h, err)
		}
		pids := e.holders(t, l.Key())
		if len(pids) != 1 || h.PID != pids[0] || h.ApplicationName != "billing-node-7" || !strings.HasPrefix(h.ClientAddr, "127.0.0.1:") {
			t.Fatalf("WhoHolds = %+v; pg_locks holders %v", h, pids)
		}
		if h.SessionStart.After(time.Now()) || h.SessionStart.Before(before.Add(-time.Minute)) {
			t.Fatalf("SessionStart %v is not around %v", h.SessionStart, before)
		}
		if n, err := postgres.Waiting(ctx, e.db, name); n != 0 || err != nil {
			t.Fatalf("Waiting with nobody waiting = %d, %v", n, err)
		}
		waiter := e.locker(t, name)
		wctx, cancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() { res <- waiter.Acquire(wctx) }()
		eventually(t, 5*time.Second, "Waiting counts the waiter", func() bool {
			n, err := postgres.Waiting(ctx, e.db, name)
			return err == nil && n == 1
		})
		cancel()
		if err := <-res; !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		// The cancelled waiter's backend was ended, not left waiting: it
		// must not be granted the lock now that it is free.
		if h, err := postgres.WhoHolds(ctx, e.db, name); h != nil || err != nil {
			t.Fatalf("WhoHolds after Release = %+v, %v", h, err)
		}
		if _, err := postgres.WhoHolds(ctx, nil, name); !errors.Is(err, locker.ErrConfig) {
			t.Fatalf("WhoHolds(nil db) = %v", err)
		}
	})
}

func TestRawKeyLocker(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		a, err := postgres.NewKey(e.db, 4242)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Release(ctx)
		if err := a.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		if pids := e.holders(t, 4242); len(pids) != 1 {
			t.Fatalf("holders of key 4242: %v", pids)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPooledSessionHoldingTheKeyRefused: advisory locks are re-entrant, so
// a pooled connection on which other code took the same key would let
// Acquire succeed at once. Acquire must refuse it instead.
func TestPooledSessionHoldingTheKeyRefused(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		db := open(t, e.driver, e.srv.URL)
		db.SetMaxOpenConns(1) // so that the locker gets the tainted connection
		name := uniqueName(t)
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", postgres.Key(name)); err != nil {
			t.Fatal(err)
		}
		conn.Close() // back to the pool, still holding the lock: the bug this guards against
		l := newLocker(t, db, name)
		err = l.Acquire(ctx)
		if err == nil || !strings.Contains(err.Error(), "holds this lock already") {
			t.Fatalf("Acquire on a session that holds the key = %v, want a refusal", err)
		}
		eventually(t, 2*time.Second, "the tainted session is destroyed", func() bool { return len(e.holders(t, l.Key())) == 0 })
	})
}
