package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// node is one node process: names lock names called prefix.0 …, on one
// Session (mode "session") or as one plain Locker each (mode "plain"). A
// loop per name acquires it, prints "start I UNIXNANO", waits for Lost,
// prints "stop I UNIXNANO" and releases it. On stdin, "release I" ends the
// loop of name I for good, and "close" ends them all, closes the Session
// and prints "closed".
func node(mode, url, prefix, id string, names int) int {
	// Every connection of the pool carries the node's identity, pinned or
	// not, so that the bench counts all that the node costs the server.
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	db, err := sql.Open("pgx", url+sep+"application_name="+id)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer db.Close()
	var (
		s   *postgres.Session
		out sync.Mutex
	)
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	opts := []postgres.Option{postgres.WithIdentity(id)}
	if os.Getenv("MANY_DEBUG") != "" {
		opts = append(opts, postgres.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	if mode == "session" {
		if s, err = postgres.NewSession(db, opts...); err != nil {
			say("error %v", err)
			return 1
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stops := make([]context.CancelFunc, names)
	var wg sync.WaitGroup
	for i := 0; i < names; i++ {
		name := fmt.Sprintf("%s.%d", prefix, i)
		var l locker.Locker
		if s != nil {
			l, err = s.Locker(name)
		} else {
			l, err = postgres.New(db, name, opts...)
		}
		if err != nil {
			say("error %v", err)
			return 1
		}
		lctx, stop := context.WithCancel(ctx)
		stops[i] = stop
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				if err := l.Acquire(lctx); err != nil {
					select {
					case <-lctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				say("start %d %d", i, time.Now().UnixNano())
				select {
				case <-l.Lost():
				case <-lctx.Done():
				}
				say("stop %d %d", i, time.Now().UnixNano())
				_ = l.Release(context.Background())
			}
		}()
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 2 && f[0] == "release" {
			if i, err := strconv.Atoi(f[1]); err == nil && i >= 0 && i < names {
				stops[i]()
			}
			continue
		}
		break
	}
	cancel()
	wg.Wait()
	if s != nil {
		if err := s.Close(); err != nil {
			say("error %v", err)
		}
	}
	say("closed")
	return 0
}
