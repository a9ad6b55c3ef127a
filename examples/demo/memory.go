package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// memoryDemo tells the story with three supervisors in this process. A
// crash is played by Terminate (the lock freed at once, as when a process
// dies) and a stop of that node's supervisor.
func memoryDemo(out io.Writer) int {
	reg := memory.New()
	leads := make(chan leadEvent, 16)
	var wg sync.WaitGroup
	cancels := map[string]context.CancelFunc{}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("node-%d", i)
		ctx, cancel := context.WithCancel(context.Background())
		cancels[id] = cancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = supervise.Run(ctx, reg.Locker(lockName), func(ctx context.Context) error {
				leads <- leadEvent{id, time.Now()}
				<-ctx.Done()
				return nil
			})
		}()
	}
	defer func() {
		for _, c := range cancels {
			c()
		}
		wg.Wait()
	}()
	first := <-leads
	fmt.Fprintf(out, "%s leads.\nCrash: %s's lock is taken away and it stops.\n", first.id, first.id)
	t0 := time.Now()
	cancels[first.id]()
	reg.Terminate(lockName)
	second := <-leads
	fmt.Fprintf(out, "%s leads: takeover %v.\nDeploy: %s stops gracefully.\n", second.id, second.at.Sub(t0).Round(time.Microsecond), second.id)
	t1 := time.Now()
	cancels[second.id]()
	third := <-leads
	fmt.Fprintf(out, "%s leads: hand-over %v.\nDone.\n", third.id, third.at.Sub(t1).Round(time.Microsecond))
	return 0
}
