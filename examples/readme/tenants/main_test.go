package main

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }

// Two replicas run 40 tenants: every tenant runs on exactly one of them,
// each replica runs 20, and neither pins more than two connections.
func TestTenants(t *testing.T) {
	srv := pglocal.Shared(t)
	const n = 40
	var tenants []string
	for i := 0; i < n; i++ {
		tenants = append(tenants, fmt.Sprintf("%s-%d", t.Name(), i))
	}
	var (
		mu      sync.Mutex
		running = map[string]int{} // tenant → replica
		per     = map[int]int{}
		overlap []string
	)
	worker := func(replica int) func(context.Context, string) error {
		return func(ctx context.Context, tenant string) error {
			mu.Lock()
			if r, ok := running[tenant]; ok {
				overlap = append(overlap, fmt.Sprintf("%s on replicas %d and %d", tenant, r, replica))
			}
			running[tenant] = replica
			per[replica]++
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			delete(running, tenant)
			per[replica]--
			mu.Unlock()
			return nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var dbs []*sql.DB
	for r := 0; r < 2; r++ {
		db, err := sql.Open("pgx", srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		dbs = append(dbs, db)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx, db, tenants, worker(r)); err != nil {
				t.Error(err)
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		settled := len(running) == n && per[0] == n/2 && per[1] == n/2
		counts := fmt.Sprint(per)
		mu.Unlock()
		if settled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenants per replica %s, want %d each", counts, n/2)
		}
		time.Sleep(20 * time.Millisecond) // the workers report no event to wait on here
	}
	for i, db := range dbs {
		if in := db.Stats().InUse; in > 2 {
			t.Errorf("replica %d pins %d connections, want at most 2", i, in)
		}
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for _, o := range overlap {
		t.Error(o)
	}
}
