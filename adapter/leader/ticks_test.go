package leader_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/adapter/internal/pgtest"
	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/locker"
)

// TestTicksClaimOnce: three nodes claim the same tick at once, as an
// unprivileged role with each driver: one wins, two find it taken; a
// Window later the tick is claimed afresh.
func TestTicksClaimOnce(t *testing.T) {
	for _, driver := range pgtest.Drivers {
		t.Run(driver, func(t *testing.T) {
			db := pgtest.Open(t, driver)
			key := fmt.Sprintf("claim-%s-%d", driver, time.Now().UnixNano())
			nodes := []*leader.Ticks{
				{DB: db, Window: 2 * time.Second}, {DB: db, Window: 2 * time.Second}, {DB: db, Window: 2 * time.Second},
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			claimAll := func() (won, taken int) {
				var wg sync.WaitGroup
				errs := make([]error, len(nodes))
				for i, n := range nodes {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs[i] = n.Claim(ctx, key)
					}()
				}
				wg.Wait()
				for _, err := range errs {
					switch {
					case err == nil:
						won++
					case errors.Is(err, leader.ErrTickTaken):
						taken++
					default:
						t.Fatalf("Claim = %v", err)
					}
				}
				return won, taken
			}
			if won, taken := claimAll(); won != 1 || taken != 2 {
				t.Fatalf("first tick: %d won, %d found it taken; want 1 and 2", won, taken)
			}
			time.Sleep(2 * time.Second) // the next tick, a Window later: time itself is under test
			if won, taken := claimAll(); won != 1 || taken != 2 {
				t.Fatalf("next tick: %d won, %d found it taken; want 1 and 2", won, taken)
			}
		})
	}
}

func TestTicksConfig(t *testing.T) {
	if err := new(leader.Ticks).Claim(context.Background(), "x"); !errors.Is(err, locker.ErrConfig) {
		t.Fatalf("Claim on a zero Ticks = %v, want ErrConfig", err)
	}
}
