package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the nodes' drivers: every other node uses each
	_ "github.com/lib/pq"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// NodeEnv, when set to a node's id, makes a chaos binary run as that node.
const NodeEnv = "ONLYONE_CHAOS_NODE"

// Settings of the nodes: a frozen or partitioned holder is replaced after
// SessionTimeout, so that a run of minutes can inject hundreds of faults.
var (
	heartbeat      = 200 * time.Millisecond
	lossTimeout    = 600 * time.Millisecond
	grace          = 600 * time.Millisecond
	sessionTimeout = 2200 * time.Millisecond
)

// beatEvery is how often a running child writes to its record: the end of
// a run that left no "stop" (its process was killed) is its last beat.
const beatEvery = 10 * time.Millisecond

// Node runs one node, on the database/sql driver named ("pgx" or
// "postgres"): it holds the lock when it can, and while it does its
// child appends to the record file, with plain writes that survive the
// process being killed: "start NANOS" when the work starts, "token NANOS
// TOKEN" once its fencing token is durable, "beat NANOS" every 10ms, "lost
// NANOS REASON" when the lock is lost, and "stop NANOS" when it stops.
func Node(id, driver, url, lockName, recordPath string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rec, err := os.OpenFile(recordPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	defer rec.Close()
	db, err := sql.Open(driver, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	defer db.Close()
	l, err := postgres.New(db, lockName, postgres.WithIdentity(id),
		postgres.WithHeartbeatInterval(heartbeat), postgres.WithLossTimeout(lossTimeout),
		postgres.WithGrace(grace), postgres.WithSessionTimeout(sessionTimeout),
		postgres.WithWaitChunk(time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	s := &supervise.Supervisor{MaxRestarts: 1 << 30, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	s.OnEvent = func(e supervise.Event) {
		if e.Kind == supervise.EventLost { // why the work is told to stop: evidence for the checker
			fmt.Fprintf(rec, "lost %d %v\n", e.Time.UnixNano(), e.Err)
		}
	}
	err = s.Run(ctx, l, func(ctx context.Context) error {
		// The work starts at the grant, and gets its fencing token once
		// the backend has made it durable (supervise.Token waits): record
		// the start first, so that the checker sees the run from then on.
		fmt.Fprintf(rec, "start %d\n", time.Now().UnixNano())
		if tok, ok := supervise.Token(ctx); ok {
			fmt.Fprintf(rec, "token %d %d\n", time.Now().UnixNano(), tok)
		}
		t := time.NewTicker(beatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				fmt.Fprintf(rec, "stop %d\n", time.Now().UnixNano())
				return nil
			case now := <-t.C:
				fmt.Fprintf(rec, "beat %d\n", now.UnixNano())
			}
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	return 0
}
