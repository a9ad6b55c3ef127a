package fence_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/fence"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }

func TestCheck(t *testing.T) {
	srv := pglocal.Shared(t)
	for _, driver := range []string{"pgx", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			db, err := sql.Open(driver, srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := fence.CreateTable(ctx, db); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS fence_ledger (who text, token bigint)`); err != nil {
				t.Fatal(err)
			}
			resource := fmt.Sprintf("ledger-%s-%d", driver, time.Now().UnixNano()) // fresh each run
			write := func(token uint64) error {
				return fence.Write(ctx, db, resource, token, func(tx *sql.Tx) error {
					_, err := tx.Exec("INSERT INTO fence_ledger VALUES ($1, $2)", resource, int64(token))
					return err
				})
			}
			for _, step := range []struct {
				token uint64
				stale bool
			}{{10, false}, {10, false}, {12, false}, {11, true}, {3, true}, {12, false}, {40, false}} {
				err := write(step.token)
				if step.stale != errors.Is(err, fence.ErrStale) || (!step.stale && err != nil) {
					t.Fatalf("write with token %d = %v, stale %v", step.token, err, step.stale)
				}
			}
			var n int
			if err := db.QueryRow("SELECT count(*) FROM fence_ledger WHERE who = $1 AND token IN (3, 11)", resource).Scan(&n); err != nil || n != 0 {
				t.Fatalf("stale writes landed: %d, %v", n, err)
			}
			if err := db.QueryRow("SELECT count(*) FROM fence_ledger WHERE who = $1", resource).Scan(&n); err != nil || n != 5 {
				t.Fatalf("%d writes landed, want 5 (%v)", n, err)
			}
		})
	}
}

// Concurrent writers with different tokens: every write that landed
// carries a token at least as large as every write that landed before it.
func TestConcurrentWritersLandInTokenOrder(t *testing.T) {
	srv := pglocal.Shared(t)
	ctx := context.Background()
	db, err := sql.Open("pgx", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := fence.CreateTable(ctx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS fence_order (seq bigserial, resource text, token bigint)`); err != nil {
		t.Fatal(err)
	}
	resource := fmt.Sprintf("order-%d", time.Now().UnixNano()) // fresh each run
	var wg sync.WaitGroup
	for w := 1; w <= 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				tok := uint64(w*1000 + i)
				err := fence.Write(ctx, db, resource, tok, func(tx *sql.Tx) error {
					_, err := tx.Exec("INSERT INTO fence_order (resource, token) VALUES ($1, $2)", resource, int64(tok))
					return err
				})
				if err != nil && !errors.Is(err, fence.ErrStale) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var bad int
	err = db.QueryRow(`SELECT count(*) FROM (SELECT token < max(token) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS back
		FROM fence_order WHERE resource = $1) s WHERE back`, resource).Scan(&bad)
	if err != nil || bad != 0 {
		t.Fatalf("%d writes landed after a write with a larger token (%v)", bad, err)
	}
}

// The common case: the child of a supervisor writes with its token.
func ExampleWrite() {
	db, err := sql.Open("pgx", "postgres://app@db.internal/app")
	if err != nil {
		panic(err)
	}
	var token uint64 = 42 // supervise.Token(ctx) in the child, or ONLYONE_FENCING_TOKEN
	err = fence.Write(context.Background(), db, "billing-ledger", token, func(tx *sql.Tx) error {
		_, err := tx.Exec("UPDATE invoices SET paid = true WHERE id = $1", 7)
		return err
	})
	if errors.Is(err, fence.ErrStale) {
		fmt.Println("a newer holder has taken over: stop")
	}
}
