package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/etcd"
)

// TestGraceAfterPartition cuts the holder off from etcd (a real TCP proxy
// that goes silent) and checks the package's promise: Lost closes while
// the lease still lives on the server, and nobody else is granted the lock
// for at least Grace after that.
func TestGraceAfterPartition(t *testing.T) {
	p, err := faultproxy.Start(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	cut := newClient(t, p.Addr())
	direct := newClient(t, endpoint)
	name := fmt.Sprintf("partition-%d", time.Now().UnixNano())

	const ttl = 3
	holder := mustNewWithClient(t, cut, name, etcd.WithTTL(ttl))
	waiter := mustNewWithClient(t, direct, name, etcd.WithTTL(ttl))
	grace := holder.Grace()
	if grace <= 0 {
		t.Fatalf("Grace = %v, want a positive grace", grace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := holder.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	lease, _ := etcd.LeaseOf(holder)
	acquired := make(chan time.Time, 1)
	go func() {
		if err := waiter.Acquire(ctx); err != nil {
			t.Error(err)
		}
		acquired <- time.Now()
	}()

	p.Drop()
	<-holder.Lost()
	lostAt := time.Now()
	if err := holder.Err(); !errors.Is(err, locker.ErrLost) {
		t.Errorf("Err after the partition = %v, want ErrLost", err)
	}
	// The lease is still alive on the server when Lost closes.
	ttlResp, err := direct.TimeToLive(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	if ttlResp.TTL <= 0 {
		t.Fatalf("the lease had expired on the server when Lost closed (TTL %d)", ttlResp.TTL)
	}
	got := <-acquired
	if gap := got.Sub(lostAt); gap < grace {
		t.Fatalf("the waiter acquired %v after the holder's Lost closed, want at least Grace (%v)", gap, grace)
	} else {
		t.Logf("Lost closed; the waiter acquired %v later (Grace %v, lease TTL %ds)", gap, grace, ttl)
	}
	p.Restore()
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	_ = holder.Release(rctx)
	if err := waiter.Release(rctx); err != nil {
		t.Fatal(err)
	}
}

// TestSharedSessionEnds revokes the lease of a Session shared by two
// Lockers of two names: both holds are lost at once, and Acquire then
// says the Session is done.
func TestSharedSessionEnds(t *testing.T) {
	cli := newClient(t, endpoint)
	s := newSession(t, cli, 10)
	base := fmt.Sprintf("shared-%d", time.Now().UnixNano())
	a, b := mustNew(t, s, base+"/a"), mustNew(t, s, base+"/b")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range []*etcd.Locker{a, b} {
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Revoke(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	for _, l := range []*etcd.Locker{a, b} {
		select {
		case <-l.Lost():
		case <-ctx.Done():
			t.Fatalf("%s: Lost still open after the shared lease was revoked", l.Name())
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	<-s.Done()
	if err := a.Acquire(ctx); !errors.Is(err, etcd.ErrSessionDone) {
		t.Fatalf("Acquire on an ended Session = %v, want ErrSessionDone", err)
	}
}

// TestTokenOfLongWaiter checks the reason tokens are not create
// revisions: a contender that waited while other names were held and
// released still gets a token larger than all of theirs.
func TestTokenOfLongWaiter(t *testing.T) {
	cli := newClient(t, endpoint)
	base := fmt.Sprintf("token-%d", time.Now().UnixNano())
	holder := mustNewWithClient(t, cli, base+"/x")
	waiter := mustNewWithClient(t, cli, base+"/x")
	other := mustNewWithClient(t, cli, base+"/y")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := holder.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- waiter.Acquire(ctx) }()
	waitForKeys(t, cli, holder.Prefix(), 2) // the waiter's key is written
	if err := other.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	otherTok, _ := other.Token()
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	tok, ok := waiter.Token()
	if !ok || tok <= otherTok {
		t.Fatalf("the long waiter's token is %d (%v), want more than %d, the token of a hold that ended before", tok, ok, otherTok)
	}
	if err := waiter.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitForKeys waits until n keys exist under prefix.
func waitForKeys(t *testing.T, cli *clientv3.Client, prefix string, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count >= n {
		return
	}
	for wr := range cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if wr.Err() != nil {
			t.Fatal(wr.Err())
		}
		c, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if c.Count >= n {
			return
		}
	}
	t.Fatalf("fewer than %d keys under %s after 10s", n, prefix)
}

// TestConfig rejects settings that leave no room to renew.
func TestConfig(t *testing.T) {
	cli := newClient(t, endpoint)
	for _, opts := range [][]etcd.Option{
		{etcd.WithTTL(-1)},
		{etcd.WithTTL(2), etcd.WithGrace(2 * time.Second)},
		{etcd.WithTTL(10), etcd.WithHeartbeatInterval(5 * time.Second)},
	} {
		if _, err := etcd.NewWithClient(cli, "config", opts...); !errors.Is(err, locker.ErrConfig) {
			t.Errorf("NewWithClient(%d options) = %v, want ErrConfig", len(opts), err)
		}
	}
	if _, err := etcd.NewWithClient(cli, ""); !errors.Is(err, locker.ErrConfig) {
		t.Errorf("empty name: %v, want ErrConfig", err)
	}
}
