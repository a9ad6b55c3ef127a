package supervise_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// slowFencer is a Locker whose Token blocks until gate is closed, as the
// PostgreSQL backend's does until the token is flushed to WAL.
type slowFencer struct {
	locker.Locker
	gate chan struct{}
}

func (f *slowFencer) Token() (uint64, bool) {
	<-f.gate
	tok, ok := locker.Token(f.Locker)
	return tok, ok
}

// The child starts without waiting for the token; Token waits for it.
func TestChildStartsBeforeTokenIsReady(t *testing.T) {
	l := &slowFencer{Locker: memory.New().Locker("fenced"), gate: make(chan struct{})}
	s := &supervise.Supervisor{Restart: supervise.Transient}
	instant(t, s)
	started := make(chan struct{})
	got := make(chan [2]uint64, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- s.Run(context.Background(), l, func(ctx context.Context) error {
			close(started) // with the token still not ready
			close(l.gate)
			tok, ok := supervise.Token(ctx)
			if !ok {
				return errors.New("no token in the child's ctx")
			}
			held, _ := locker.Token(l.Locker)
			got <- [2]uint64{tok, held}
			return nil
		})
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		close(l.gate)
		t.Fatal("the child did not start while the token was not ready")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if g := <-got; g[0] != g[1] {
		t.Fatalf("token %d, want the hold's, %d", g[0], g[1])
	}
}
