package onlyone_test

import (
	"context"
	"fmt"

	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// The shape of every program that uses onlyone: a lock, and a function
// that runs while it is held. In production the lock comes from
// postgres.New(db, "nightly-billing"); here, from the in-memory backend.
func Example() {
	reg := memory.New()
	job := func(ctx context.Context) error {
		fmt.Println("billing, on one node only")
		return nil
	}
	s := &supervise.Supervisor{Restart: supervise.Temporary} // run once
	if err := s.Run(context.Background(), reg.Locker("nightly-billing"), job); err != nil {
		fmt.Println("error:", err)
	}
	// Output: billing, on one node only
}
