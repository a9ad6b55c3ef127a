package etcd_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/etcd"
	"github.com/onlyone-go/onlyone/locker/lockertest"
)

// newClient returns a client of the test server, closed when t ends. It
// has made one request already: gRPC connects lazily, and the
// connection's goroutines must not count as a property's leaks.
func newClient(t testing.TB, ep string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "onlyone-test-warm-up"); err != nil {
		t.Fatal(err)
	}
	return cli
}

// newSession returns a Session with the given TTL, closed when t ends.
func newSession(t testing.TB, cli *clientv3.Client, ttl int) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustNew(t testing.TB, s *concurrency.Session, name string, opts ...etcd.Option) *etcd.Locker {
	t.Helper()
	l, err := etcd.New(s, name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustNewWithClient(t testing.TB, cli *clientv3.Client, name string, opts ...etcd.Option) *etcd.Locker {
	t.Helper()
	l, err := etcd.NewWithClient(cli, name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// leakOptions name the goroutines that an etcd client starts on first use
// and keeps until it is closed — its lease keep-alive loops, and the gRPC
// streams of its watches, which end some time after their last watch is
// cancelled — so that lockertest's check after each property looks only
// at the backend's own goroutines. TestMain checks, with no exceptions,
// that nothing is left once the tests' clients are closed.
var leakOptions = []goleak.Option{
	goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/v3.(*watchGRPCStream).run"),
	goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/v3.(*lessor).deadlineLoop"),
	goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/v3.(*lessor).sendKeepAliveLoop"),
	goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/v3.(*lessor).recvKeepAliveLoop"),
	goleak.IgnoreAnyFunction("google.golang.org/grpc.newClientStreamWithParams.func4"),
	goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/transport.(*recvBufferReader).readMessageHeaderClient"),
	goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/transport.(*ClientStream).waitOnHeader"),
	goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/transport.(*controlBuffer).get"),
	goleak.IgnoreAnyFunction("context.(*cancelCtx).propagateCancel.func2"),
}

// TestConformance runs the locker contract against a real etcd, with
// Lockers that have Sessions of their own (NewWithClient). Break revokes
// the holder's lease, as an operator or an expiry would.
func TestConformance(t *testing.T) {
	cli := newClient(t, endpoint)
	lockertest.Run(t, lockertest.Backend{
		New: func(t *testing.T, name string) locker.Locker {
			return mustNewWithClient(t, cli, name)
		},
		Break: func(t *testing.T, l locker.Locker) {
			lease, ok := etcd.LeaseOf(l.(*etcd.Locker))
			if !ok {
				t.Fatal("Break: the Locker holds no lease")
			}
			if _, err := cli.Revoke(context.Background(), lease); err != nil {
				t.Fatal(err)
			}
		},
		LeakOptions: leakOptions,
	})
}

// TestConformanceSharedSession runs the contract with every contender on
// one Session, as etcd's mutexes share one: they must still exclude one
// another. Break deletes the holder's key, as an operator would: revoking
// the shared lease would end every contender.
func TestConformanceSharedSession(t *testing.T) {
	cli := newClient(t, endpoint)
	s := newSession(t, cli, 10)
	lockertest.Run(t, lockertest.Backend{
		New: func(t *testing.T, name string) locker.Locker {
			return mustNew(t, s, name)
		},
		Break: func(t *testing.T, l locker.Locker) {
			key, ok := etcd.KeyOf(l.(*etcd.Locker))
			if !ok {
				t.Fatal("Break: the Locker has no key")
			}
			if _, err := cli.Delete(context.Background(), key); err != nil {
				t.Fatal(err)
			}
		},
		LeakOptions: leakOptions,
	})
}
