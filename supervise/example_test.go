package supervise_test

import (
	"context"
	"fmt"

	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// The common case: run a job while this process holds the lock. With the
// PostgreSQL backend the locker would come from postgres.New(db, name).
func ExampleRun() {
	reg := memory.New()
	l := reg.Locker("nightly-billing")
	job := func(ctx context.Context) error {
		fmt.Println("billing run, on this replica only")
		return nil
	}
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	if err := s.Run(context.Background(), l, job); err != nil {
		fmt.Println("error:", err)
	}
	// Output: billing run, on this replica only
}

// A child stops when the lock is lost, and the supervisor reports each
// transition to its hook.
func ExampleSupervisor_OnEvent() {
	reg := memory.New()
	ctx, cancel := context.WithCancel(context.Background())
	s := &supervise.Supervisor{
		OnEvent: func(e supervise.Event) {
			fmt.Println(e.Kind)
			switch e.Kind {
			case supervise.EventAcquired:
				reg.Revoke("relay") // as if the backend lost the lock
			case supervise.EventReleased:
				cancel() // shut down after the first hand-back
			}
		},
	}
	relay := func(ctx context.Context) error {
		<-ctx.Done() // relay messages until told to stop
		return nil
	}
	_ = s.Run(ctx, reg.Locker("relay"), relay)
	fmt.Println(s.Status().State)
	// Output:
	// waiting
	// acquired
	// lost
	// stopping
	// child-exited
	// released
	// waiting
	// stopped
}
