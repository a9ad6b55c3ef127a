package cronlock_test

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/onlyone-go/onlyone/adapter/cronlock"
	"github.com/onlyone-go/onlyone/adapter/internal/pgtest"
	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// runs records which node ran each tick of a job.
type runs struct {
	mu    sync.Mutex
	ticks map[int64][]int
	wake  chan struct{}
}

func newRuns() *runs { return &runs{ticks: map[int64][]int{}, wake: make(chan struct{})} }

func (r *runs) job(node int) cron.Job {
	return cron.FuncJob(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		s := time.Now().Truncate(time.Second).Unix() // cron fires on the second, never before
		r.ticks[s] = append(r.ticks[s], node)
		close(r.wake)
		r.wake = make(chan struct{})
	})
}

// wait waits until n distinct ticks have run.
func (r *runs) wait(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(time.Duration(n)*time.Second + 20*time.Second)
	for {
		r.mu.Lock()
		got, wake := len(r.ticks), r.wake
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-wake:
		case <-timeout:
			t.Fatalf("only %d ticks ran", got)
		}
	}
}

// check fails t unless every second from the first tick to the last ran
// exactly once; it returns the nodes that ran the last tick.
func (r *runs) check(t *testing.T) int {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var ss []int64
	for s := range r.ticks {
		ss = append(ss, s)
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i] < ss[j] })
	for s := ss[0]; s <= ss[len(ss)-1]; s++ {
		if n := len(r.ticks[s]); n != 1 {
			t.Errorf("tick %s ran %d times (nodes %v), want once", time.Unix(s, 0).UTC().Format("15:04:05"), n, r.ticks[s])
		}
	}
	last := r.ticks[ss[len(ss)-1]]
	return last[len(last)-1]
}

// startCrons starts one real cron.Cron per node, each firing every second
// with the job wrapped for that node; they stop when t ends.
func startCrons(t *testing.T, n int, wrap func(node int) cron.JobWrapper, r *runs) {
	for i := 0; i < n; i++ {
		c := cron.New(cron.WithSeconds(), cron.WithChain(wrap(i)))
		if _, err := c.AddJob("* * * * * *", r.job(i)); err != nil {
			t.Fatal(err)
		}
		c.Start()
		t.Cleanup(func() { <-c.Stop().Done() })
	}
}

// TestOnlyLeader runs a job every second on three crons, wrapped with
// OnlyLeader: each tick runs once, on the leader; when the leader shuts
// down, the ticks run once each on another node.
func TestOnlyLeader(t *testing.T) {
	for _, driver := range pgtest.Drivers {
		t.Run(driver, func(t *testing.T) {
			db := pgtest.Open(t, driver)
			name := fmt.Sprintf("cron-leader-%s-%d", driver, time.Now().UnixNano())
			var els []*leader.Elector
			var cancels []context.CancelFunc
			var wg sync.WaitGroup
			for i := 0; i < 3; i++ {
				l, err := postgres.New(db, name, postgres.WithIdentity(fmt.Sprint("node", i)))
				if err != nil {
					t.Fatal(err)
				}
				el := leader.NewElector(l, &supervise.Supervisor{Logger: slog.New(slog.DiscardHandler)})
				ctx, cancel := context.WithCancel(context.Background())
				els, cancels = append(els, el), append(cancels, cancel)
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := el.Run(ctx); err != nil {
						t.Errorf("Run = %v", err)
					}
				}()
			}
			t.Cleanup(func() {
				for _, c := range cancels {
					c()
				}
				wg.Wait()
			})
			r := newRuns()
			startCrons(t, 3, func(i int) cron.JobWrapper { return cronlock.OnlyLeader(els[i]) }, r)
			r.wait(t, 4)
			leaderNode := r.check(t)
			cancels[leaderNode]() // a deploy: the leader shuts down
			r.wait(t, 8)
			if next := r.check(t); next == leaderNode {
				t.Fatalf("node %d ran a tick after it shut down", leaderNode)
			}
		})
	}
}

// TestOncePerTick runs a job every second on three crons, wrapped with
// OncePerTick: each tick runs once across the three.
func TestOncePerTick(t *testing.T) {
	for _, driver := range pgtest.Drivers {
		t.Run(driver, func(t *testing.T) {
			db := pgtest.Open(t, driver)
			key := fmt.Sprintf("cron-tick-%s-%d", driver, time.Now().UnixNano())
			r := newRuns()
			startCrons(t, 3, func(int) cron.JobWrapper {
				return cronlock.OncePerTick(&leader.Ticks{DB: db, Window: 500 * time.Millisecond}, key, nil)
			}, r)
			r.wait(t, 6)
			r.check(t)
		})
	}
}
