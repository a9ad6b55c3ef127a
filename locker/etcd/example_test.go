package etcd_test

import (
	"context"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/onlyone-go/onlyone/locker/etcd"
	"github.com/onlyone-go/onlyone/supervise"
)

// A nightly report runs on one node of the cluster at a time, under a
// supervisor: it stops when the lock is lost, and the supervisor waits
// for it (within the Locker's Grace) before anyone else can start it.
func Example_supervise() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()

	l, err := etcd.NewWithClient(cli, "nightly-report")
	if err != nil {
		log.Fatal(err)
	}
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	err = s.Run(context.Background(), l, func(ctx context.Context) error {
		tok, _ := supervise.Token(ctx) // send it with every write the report makes
		fmt.Println("writing the report as the only holder; token > 0:", tok > 0)
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// writing the report as the only holder; token > 0: true
	// done: <nil>
}

// Many Lockers share one Session, as etcd's mutexes do: one lease, kept
// alive once, for every name this node may hold.
func ExampleNew() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()

	ctx := context.Background()
	for _, name := range []string{"billing", "cleanup"} {
		l, err := etcd.New(sess, name)
		if err != nil {
			log.Fatal(err)
		}
		if err := l.Acquire(ctx); err != nil {
			log.Fatal(err)
		}
		fmt.Println("holding", l.Name(), "with grace", l.Grace())
		if err := l.Release(ctx); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// holding billing with grace 2.5s
	// holding cleanup with grace 2.5s
}
