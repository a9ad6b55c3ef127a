package gocronlock_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"

	"github.com/go-co-op/gocron/v2"

	"github.com/onlyone-go/onlyone/adapter/gocronlock"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// Only the leader's scheduler runs jobs; a guarded task stops when the
// lock is lost, and the lock is kept until it has.
func ExampleNewElector() {
	l := memory.New().Locker("reports") // postgres.New(db, "reports") in production
	el := gocronlock.NewElector(l, &supervise.Supervisor{Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	campaign := make(chan error, 1)
	go func() { campaign <- el.Run(ctx) }()
	if err := el.WaitLeader(ctx); err != nil {
		log.Fatal(err)
	}

	s, err := gocron.NewScheduler(gocron.WithDistributedElector(el))
	if err != nil {
		log.Fatal(err)
	}
	ran := make(chan struct{})
	_, err = s.NewJob(gocron.OneTimeJob(gocron.OneTimeJobStartImmediately()),
		gocron.NewTask(el.Guard(func(ctx context.Context) error {
			fmt.Println("report written by the leader")
			close(ran)
			return nil
		})))
	if err != nil {
		log.Fatal(err)
	}
	s.Start()
	<-ran
	if err := s.Shutdown(); err != nil {
		log.Fatal(err)
	}
	cancel()
	if err := <-campaign; err != nil {
		log.Fatal(err)
	}
	// Output: report written by the leader
}
