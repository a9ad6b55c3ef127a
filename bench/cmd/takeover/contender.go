package main

import (
	"context"
	"database/sql"
	"fmt"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// A contender is one process of a trial. Its "child" is the work that must
// run on one contender at a time: it prints "start NANOS" when it begins
// and "stop NANOS" when it ends, on stdout, which the parent reads.

func say(what string) {
	fmt.Printf("%s %d\n", what, time.Now().UnixNano())
}

// contender runs system against endpoint until SIGTERM.
func contender(system, endpoint, name, id string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch system {
	case "onlyone-pgx":
		err = onlyoneContender(ctx, "pgx", endpoint, name, id)
	case "onlyone-pq":
		err = onlyoneContender(ctx, "postgres", endpoint, name, id)
	case "onlyone-bare":
		err = bareContender(ctx, endpoint, name, id)
	case "raw":
		err = rawContender(ctx, endpoint, name, "")
	case "raw-busy", "raw-spare":
		err = rawContender(ctx, endpoint, name, system)
	case "etcd-60s":
		err = etcdContender(ctx, endpoint, name, id, 60)
	case "etcd-2s":
		err = etcdContender(ctx, endpoint, name, id, 2)
	case "etcd-onlyone":
		err = etcdOnlyoneContender(ctx, endpoint, name, id)
	default:
		err = fmt.Errorf("unknown system %q", system)
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	return 0
}

// onlyoneContender: the library at its defaults, under the supervisor.
func onlyoneContender(ctx context.Context, driver, url, name, id string) error {
	db, l, err := openLocker(driver, url, name, id)
	if err != nil {
		return err
	}
	defer db.Close()
	return supervise.Run(ctx, l, func(ctx context.Context) error {
		say("start")
		<-ctx.Done()
		say("stop")
		return nil
	})
}

// rawContender: a blocking pg_advisory_lock, the physical limit. It has no
// way to learn that it lost the lock. Two variants each add one thing
// onlyone's holder does, to tell its costs apart:
//   - raw-busy keeps a statement in flight on the lock's connection
//     (pg_sleep for a second, again and again) with the server checking
//     for a dead client every 2ms, as onlyone's heartbeat does;
//   - raw-spare keeps one more connection idle in its pool, as onlyone's
//     holder does for Release (and any application's pool would).
func rawContender(ctx context.Context, url, name, variant string) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	if variant == "raw-spare" {
		if err := db.PingContext(ctx); err != nil { // opens a second connection: the first is pinned
			return err
		}
	}
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", postgres.Key(name)); err != nil {
		return err
	}
	say("start")
	defer say("stop") // also when SIGTERM cuts a statement below short
	if variant == "raw-busy" {
		if _, err := conn.ExecContext(ctx, "SET client_connection_check_interval = '2ms'"); err != nil {
			return err
		}
		for ctx.Err() == nil {
			_, _ = conn.ExecContext(context.Background(), "SELECT pg_sleep(1)")
		}
	}
	<-ctx.Done()
	return nil
}

// etcdContender: concurrency.Election with a session of ttl seconds; the
// child runs until the session ends (its lease is lost) or SIGTERM.
func etcdContender(ctx context.Context, endpoint, name, id string, ttl int) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		e := concurrency.NewElection(sess, "/bench/"+name)
		if err := e.Campaign(ctx, id); err != nil {
			sess.Close()
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		say("start")
		select {
		case <-sess.Done():
			say("stop")
			continue
		case <-ctx.Done():
			say("stop")
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = e.Resign(rctx)
			cancel()
			sess.Close()
			return nil
		}
	}
}

// bareContender: the library without the supervisor, to tell their costs
// apart.
func bareContender(ctx context.Context, url, name, id string) error {
	db, l, err := openLocker("pgx", url, name, id)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := l.Acquire(ctx); err != nil {
		return err
	}
	say("start")
	<-ctx.Done()
	say("stop")
	return l.Release(context.Background())
}

// openLocker opens a pool and a Locker at the library's defaults.
func openLocker(driver, url, name, id string) (*sql.DB, *postgres.Locker, error) {
	db, err := sql.Open(driver, url)
	if err != nil {
		return nil, nil, err
	}
	l, err := postgres.New(db, name, postgres.WithIdentity(id))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, l, nil
}
