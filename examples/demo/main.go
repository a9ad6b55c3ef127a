// Command demo tells the onlyone story with real processes: three nodes
// contend for one lock, and for six tenants on one postgres.Session each;
// the leader is killed (a crash), then the next one is stopped gracefully
// (a deploy); the takeover times are measured.
//
//	make demo        # or: go run ./examples/demo
//
// It uses DATABASE_URL if set, else starts a throwaway PostgreSQL from
// local binaries (removed at the end). Without PostgreSQL it says how to
// get one and tells the same story on the in-memory backend.
package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

const lockName = "onlyone-demo"

func main() {
	if id := os.Getenv(nodeEnv); id != "" {
		os.Exit(node(id, os.Getenv("DATABASE_URL")))
	}
	os.Exit(demo(os.Stdout))
}

// nodeEnv, when set, makes this program a node with that identity.
const nodeEnv = "ONLYONE_DEMO_NODE"

// node holds the lock when it can and runs a "job" while it does, telling
// its parent on stdout: "leading <unix-nanos>" and "stopped".
func node(id, url string) int {
	db, err := sql.Open("pgx", url)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer db.Close()
	l, err := postgres.New(db, lockName, postgres.WithIdentity(id))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx, stop := signalContext()
	defer stop()
	var out sync.Mutex
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	tenantsDone := make(chan error, 1)
	go func() { tenantsDone <- runTenants(ctx, db, id, say) }()
	err = supervise.Run(ctx, l, func(ctx context.Context) error {
		say("leading %d", time.Now().UnixNano())
		<-ctx.Done() // the job: here, nothing but waiting to be told to stop
		say("stopped")
		return nil
	})
	if terr := <-tenantsDone; err == nil {
		err = terr
	}
	if err != nil {
		say("error %v", err)
		return 1
	}
	return 0
}

func demo(out io.Writer) int {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		srv, err := pglocal.Start()
		if errors.Is(err, pglocal.ErrNotFound) {
			fmt.Fprintf(out, "No PostgreSQL here: %v.\nTelling the story on the in-memory backend instead, in one process.\n\n", err)
			return memoryDemo(out)
		}
		if err != nil {
			fmt.Fprintln(out, "demo:", err)
			return 1
		}
		defer srv.Stop()
		url = srv.URL
		fmt.Fprintf(out, "Started a throwaway PostgreSQL (%s); it is removed at the end.\n", srv.Kind)
	} else {
		fmt.Fprintln(out, "Using the PostgreSQL at DATABASE_URL.")
	}
	if err := story(out, url); err != nil {
		fmt.Fprintln(out, "demo:", err)
		return 1
	}
	return 0
}

// proc is one node process.
type proc struct {
	id    string
	cmd   *exec.Cmd
	lines chan string
}

type leadEvent struct {
	id string
	at time.Time
}

func story(out io.Writer, url string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	leads := make(chan leadEvent, 16)
	tm := newTenantMap()
	var nodes []*proc
	defer func() {
		for _, p := range nodes {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	}()
	fmt.Fprintln(out, "Starting three nodes that all want the lock "+strconv.Quote(lockName)+": node-1, node-2, node-3.")
	for i := 1; i <= 3; i++ {
		p := &proc{id: fmt.Sprintf("node-%d", i), lines: make(chan string, 16)}
		p.cmd = exec.Command(self)
		p.cmd.Env = append(os.Environ(), nodeEnv+"="+p.id, "DATABASE_URL="+url, "GORACE=atexit_sleep_ms=0")
		stdout, err := p.cmd.StdoutPipe()
		if err != nil {
			return err
		}
		p.cmd.Stderr = os.Stderr
		if err := p.cmd.Start(); err != nil {
			return err
		}
		nodes = append(nodes, p)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if tm.event(p.id, f) {
					continue
				}
				if len(f) == 2 && f[0] == "leading" {
					ns, _ := strconv.ParseInt(f[1], 10, 64)
					leads <- leadEvent{p.id, time.Unix(0, ns)}
				} else if len(f) > 0 && f[0] == "error" {
					fmt.Fprintf(out, "%s: %s\n", p.id, sc.Text())
				}
			}
		}()
	}
	byID := func(id string) *proc {
		for _, p := range nodes {
			if p.id == id {
				return p
			}
		}
		return nil
	}
	next := func() (leadEvent, error) {
		select {
		case e := <-leads:
			return e, nil
		case <-time.After(30 * time.Second):
			return leadEvent{}, errors.New("no node took the lead within 30s")
		}
	}

	first, err := next()
	if err != nil {
		return err
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := waitForWaiters(db, 2); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s leads. The other two wait, blocked in PostgreSQL.\n", first.id)
	ids := []string{"node-1", "node-2", "node-3"}
	if err := tm.wait(func(on map[string]string) bool {
		per := map[string]int{}
		for _, n := range on {
			per[n]++
		}
		return len(per) == 3 && per["node-1"] == per["node-2"] && per["node-2"] == per["node-3"]
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "Each node also runs a worker per tenant, %d tenants, each on one node at a time, on one postgres.Session per node:\n  %s\n  server connections per node for all of them: %s.\n\n",
		len(tenants), tm.spread(ids), tenantConns(db, ids))

	fmt.Fprintf(out, "Crash: SIGKILL %s.\n", first.id)
	killed := time.Now()
	victim := byID(first.id)
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	_ = victim.cmd.Wait()
	second, err := next()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s leads: takeover %v after the crash (no lease to expire: the server freed the lock when the connection died).\n",
		second.id, second.at.Sub(killed).Round(10*time.Microsecond))
	its := tm.forget(first.id)
	took, err := tm.movedAfter(first.id, its, killed)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Its tenants (%s) run elsewhere %v after the crash: %s.\n\n", strings.Join(its, ", "), took.Round(100*time.Microsecond), tm.spread(ids))

	fmt.Fprintf(out, "Deploy: SIGTERM %s; it stops its job, then releases the lock.\n", second.id)
	stopped := time.Now()
	leaver := byID(second.id)
	_ = leaver.cmd.Process.Signal(syscall.SIGTERM)
	third, err := next()
	if err != nil {
		return err
	}
	if err := leaver.cmd.Wait(); err != nil {
		return fmt.Errorf("%s did not exit cleanly: %v", leaver.id, err)
	}
	fmt.Fprintf(out, "%s leads: hand-over %v after SIGTERM.\n", third.id, third.at.Sub(stopped).Round(10*time.Microsecond))
	if err := tm.wait(func(on map[string]string) bool {
		for _, n := range on {
			if n != third.id {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "Its tenants stopped first, then passed on: %s.\n\n", tm.spread(ids))

	if h, err := postgres.WhoHolds(context.Background(), db, lockName); err == nil && h != nil {
		fmt.Fprintf(out, "onlyone status says: %s holds %q (backend pid %d, %s).\n", h.ApplicationName, lockName, h.PID, h.ClientAddr)
	}
	last := byID(third.id)
	_ = last.cmd.Process.Signal(syscall.SIGTERM)
	if err := last.cmd.Wait(); err != nil {
		return fmt.Errorf("%s did not exit cleanly: %v", last.id, err)
	}
	fmt.Fprintln(out, "Stopped the last node. Done.")
	return nil
}

// waitForWaiters waits until n sessions wait for the demo's lock, so that
// the takeover measured is the server's hand-over, not a node connecting.
func waitForWaiters(db *sql.DB, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		waiting, err := postgres.Waiting(context.Background(), db, lockName)
		if err == nil && waiting >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the other nodes did not start waiting within 30s (last error: %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
