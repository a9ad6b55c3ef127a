package supervise

import (
	"context"

	"github.com/onlyone-go/onlyone/locker"
)

type tokenKey struct{}

// Token returns the fencing token of the hold under which the child whose
// ctx this is was started, when the Locker hands out tokens (a
// locker.Fencer). Send it with every write to the protected resource, so
// that the resource can refuse this child once a newer holder has written
// (see package fence).
func Token(ctx context.Context) (uint64, bool) {
	tok, ok := ctx.Value(tokenKey{}).(uint64)
	return tok, ok
}

// withToken returns ctx carrying l's current token, if it has one.
func withToken(ctx context.Context, l locker.Locker) context.Context {
	if tok, ok := locker.Token(l); ok {
		return context.WithValue(ctx, tokenKey{}, tok)
	}
	return ctx
}
