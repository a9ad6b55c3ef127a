package main

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/onlyone-go/onlyone/locker/etcd"
	"github.com/onlyone-go/onlyone/supervise"
)

// etcdOnlyoneContender: onlyone's etcd backend (locker/etcd) at its
// defaults (lease TTL 10s, Grace 2.5s), under the supervisor. Its keys live
// under /bench/NAME/, where the trial counts the waiters, as for the raw
// etcd contenders. Its name starts with "etcd" so that the trial points it
// at the etcd server.
func etcdOnlyoneContender(ctx context.Context, endpoint, name, id string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	l, err := etcd.NewWithClient(cli, name, etcd.WithPrefix("/bench/"), etcd.WithIdentity(id))
	if err != nil {
		return err
	}
	return supervise.Run(ctx, l, func(ctx context.Context) error {
		say("start")
		<-ctx.Done()
		say("stop")
		return nil
	})
}
