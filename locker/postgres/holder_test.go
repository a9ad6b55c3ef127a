package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// unprivileged returns a URL for a new role with LOGIN and nothing else: no
// superuser, no pg_read_all_stats, as an application role on a managed
// server. The role is dropped when the test ends.
func unprivileged(t *testing.T, e *env) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "onlyone_plain_" + hex.EncodeToString(b[:])
	if _, err := e.admin.Exec("CREATE ROLE " + role + " LOGIN NOSUPERUSER NOINHERIT"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.admin.Exec("DROP ROLE " + role) })
	var stats bool
	if err := e.admin.QueryRow("SELECT pg_has_role($1, 'pg_read_all_stats', 'MEMBER')", role).Scan(&stats); err != nil || stats {
		t.Fatalf("role %s reads all stats: %v, %v", role, stats, err)
	}
	return e.srv.URLWith(role, "", "")
}

// Another role's session: pid, identity and role are visible, address and
// session start are hidden, and nothing fails.
func TestWhoHoldsUnprivileged(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		plain := open(t, e.driver, unprivileged(t, e))
		name := uniqueName(t)
		holder := e.locker(t, name, postgres.WithIdentity("billing-node-7"))
		if who, err := holder.Holder(ctx); who != "" || err != nil {
			t.Fatalf("Holder of a free lock = %q, %v; want \"\", nil", who, err)
		}
		if err := holder.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		h, err := postgres.WhoHolds(ctx, plain, name)
		if err != nil || h == nil {
			t.Fatalf("WhoHolds as an unprivileged role = %+v, %v", h, err)
		}
		pids := e.holders(t, holder.Key())
		if len(pids) != 1 || h.PID != pids[0] || h.ApplicationName != "billing-node-7" || h.Role == "" {
			t.Fatalf("WhoHolds = %+v; pg_locks holders %v", h, pids)
		}
		if h.ClientAddr != "" || !h.SessionStart.IsZero() {
			t.Fatalf("WhoHolds = %+v: the server showed another role's address or start; the test's role is privileged", h)
		}

		// The same role's own session shows everything.
		mine := newLocker(t, plain, uniqueName(t), postgres.WithIdentity("plain-node"))
		if err := mine.Acquire(ctx); err != nil {
			t.Fatalf("Acquire as an unprivileged role: %v", err)
		}
		own, err := postgres.WhoHoldsKey(ctx, plain, mine.Key())
		if err != nil || own == nil || own.ApplicationName != "plain-node" || own.SessionStart.IsZero() || own.ClientAddr == "" {
			t.Fatalf("WhoHolds of the role's own session = %+v, %v", own, err)
		}
		if err := mine.Release(ctx); err != nil {
			t.Fatal(err)
		}

		waiter := newLocker(t, plain, name, postgres.WithIdentity("plain-waiter"))
		wctx, cancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() { res <- waiter.Acquire(wctx) }()
		eventually(t, 5*time.Second, "Waiting, as the unprivileged role, counts its waiter", func() bool {
			n, err := postgres.Waiting(ctx, plain, name)
			if err != nil {
				t.Fatalf("Waiting as an unprivileged role: %v", err)
			}
			return n == 1
		})
		// The waiter can say whom it waits for, through the capability
		// package supervise uses.
		who, ok, err := locker.Holder(ctx, waiter)
		if !ok || err != nil || who != "billing-node-7" {
			t.Fatalf("locker.Holder(waiter) = %q, %v, %v; want billing-node-7", who, ok, err)
		}
		if id, ok := locker.Identity(waiter); !ok || id != "plain-waiter" {
			t.Fatalf("locker.Identity(waiter) = %q, %v", id, ok)
		}
		cancel()
		if err := <-res; !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if err := holder.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
