package supervise

import (
	"context"

	"github.com/onlyone-go/onlyone/locker"
)

type tokenKey struct{}

// A heldToken is the fencing token of one hold, read beside the child's
// start: a backend may have to make it durable first (PostgreSQL flushes
// it to WAL), and the child's start does not wait for that.
type heldToken struct {
	ready chan struct{} // closed once tok and ok are set
	tok   uint64
	ok    bool
}

// Token returns the fencing token of the hold under which the child whose
// ctx this is was started, when the Locker hands out tokens (a
// locker.Fencer). Send it with every write to the protected resource, so
// that the resource can refuse this child once a newer holder has written
// (see package fence).
//
// The child starts as soon as the lock is held; Token waits, the first
// time, until the backend has the token ready (the PostgreSQL backend
// flushes it to WAL, about a millisecond), and returns false if the hold
// ended before it was.
func Token(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(tokenKey{}).(*heldToken)
	if !ok {
		return 0, false
	}
	<-t.ready
	return t.tok, t.ok
}

// withToken returns ctx carrying the token of l's current hold, read in the
// background, and a func that waits until it has been read. lead calls it
// before it returns, so that the read cannot see a later hold.
func withToken(ctx context.Context, l locker.Locker) (context.Context, func()) {
	if _, ok := l.(locker.Fencer); !ok {
		return ctx, func() {}
	}
	t := &heldToken{ready: make(chan struct{})}
	go func() {
		defer close(t.ready)
		t.tok, t.ok = locker.Token(l)
	}()
	return context.WithValue(ctx, tokenKey{}, t), func() { <-t.ready }
}
