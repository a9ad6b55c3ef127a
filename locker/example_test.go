package locker_test

import (
	"context"
	"fmt"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/memory"
)

// A holder acts only while Lost is open; when the lock is taken away it
// stops, and Err says why.
func ExampleLocker() {
	reg := memory.New() // one registry plays the part of the server
	a, b := reg.Locker("nightly-billing"), reg.Locker("nightly-billing")
	ctx := context.Background()

	if err := a.Acquire(ctx); err != nil {
		panic(err)
	}
	fmt.Println("a holds the lock")

	busy, cancel := context.WithCancel(ctx)
	cancel() // b gives up at once: the lock is held
	fmt.Println("b:", b.Acquire(busy) != nil)

	reg.Revoke("nightly-billing") // the backend takes the lock away
	<-a.Lost()
	fmt.Println("a lost it:", locker.Err(a))
	_ = a.Release(ctx)

	if err := b.Acquire(ctx); err != nil {
		panic(err)
	}
	fmt.Println("b holds the lock")
	_ = b.Release(ctx)
	// Output:
	// a holds the lock
	// b: true
	// a lost it: memory: lock "nightly-billing" lost: memory: lock revoked
	// b holds the lock
}
