package cronlock_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"

	"github.com/robfig/cron/v3"

	"github.com/onlyone-go/onlyone/adapter/cronlock"
	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// Every node runs the same cron; only the leader's runs the job.
func ExampleOnlyLeader() {
	l := memory.New().Locker("reports") // postgres.New(db, "reports") in production
	el := leader.NewElector(l, &supervise.Supervisor{Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	campaign := make(chan error, 1)
	go func() { campaign <- el.Run(ctx) }()
	if err := el.WaitLeader(ctx); err != nil {
		log.Fatal(err)
	}

	c := cron.New(cron.WithSeconds(), cron.WithChain(cronlock.OnlyLeader(el)))
	ran := make(chan struct{}, 1)
	if _, err := c.AddFunc("* * * * * *", func() {
		select {
		case ran <- struct{}{}:
		default:
		}
	}); err != nil {
		log.Fatal(err)
	}
	c.Start()
	<-ran
	<-c.Stop().Done()
	fmt.Println("the job ran on the leader")

	cancel()
	if err := <-campaign; err != nil {
		log.Fatal(err)
	}
	// Output: the job ran on the leader
}
