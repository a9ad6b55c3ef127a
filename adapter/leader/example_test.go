package leader_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"

	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// Two nodes campaign; the one that leads runs the guarded task, the other
// does not.
func Example() {
	reg := memory.New() // locker/postgres or locker/etcd in production
	quiet := func() *supervise.Supervisor { return &supervise.Supervisor{Logger: slog.New(slog.DiscardHandler)} }
	a := leader.NewElector(reg.Locker("reports"), quiet())
	b := leader.NewElector(reg.Locker("reports"), quiet())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	if err := a.WaitLeader(ctx); err != nil {
		log.Fatal(err)
	}
	go func() { done <- b.Run(ctx) }()

	task := func(name string) func(context.Context) error {
		return func(ctx context.Context) error { fmt.Println("report written by", name); return nil }
	}
	fmt.Println("a:", a.Guard(task("a"))(ctx))
	fmt.Println("b:", b.Guard(task("b"))(ctx))

	cancel()
	for range 2 {
		if err := <-done; err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// report written by a
	// a: <nil>
	// b: leader: not the leader
}
