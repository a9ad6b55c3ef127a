package gocronlock_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-co-op/gocron/v2"
	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/adapter/gocronlock"
	"github.com/onlyone-go/onlyone/adapter/internal/pgtest"
	"github.com/onlyone-go/onlyone/adapter/leader"
	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// The cluster tests run each node as a process of its own (this test
// binary, run again with nodeEnv set), with a real gocron scheduler, so
// that a node can be killed for real. A node reads the database URL from
// its stdin (never argv or the environment: it carries a password), prints
// "run NODE UNIXNANO" each time the job runs, and stops when its stdin
// closes.

const nodeEnv = "GOCRONLOCK_TEST_NODE" // mode,driver,name,node

func TestMain(m *testing.M) {
	if spec := os.Getenv(nodeEnv); spec != "" {
		os.Exit(runNode(spec))
	}
	goleak.VerifyTestMain(pglocal.Main(m))
}

func runNode(spec string) int {
	f := strings.Split(spec, ",")
	mode, driver, name, id := f[0], f[1], f[2], f[3]
	in := bufio.NewReader(os.Stdin)
	url, err := in.ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "node: reading the URL:", err)
		return 2
	}
	db, err := sql.Open(driver, strings.TrimSpace(url))
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 2
	}
	defer db.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() { _, _ = io.Copy(io.Discard, in); stop() }() // the test ended or died

	say := func(context.Context) error {
		fmt.Printf("run %s %d\n", id, time.Now().UnixNano())
		return nil
	}
	var opts []gocron.SchedulerOption
	var task func(context.Context) error
	campaign := make(chan error, 1)
	switch mode {
	case "elector":
		l, err := postgres.New(db, name, postgres.WithIdentity(id))
		if err != nil {
			fmt.Fprintln(os.Stderr, "node:", err)
			return 2
		}
		el := gocronlock.NewElector(l, nil)
		go func() { campaign <- el.Run(ctx) }()
		opts = append(opts, gocron.WithDistributedElector(el))
		task = el.Guard(say)
	case "ticks":
		opts = append(opts, gocron.WithDistributedLocker(gocronlock.TickLocker{Ticks: &leader.Ticks{DB: db, Window: 500 * time.Millisecond}}))
		task = say
		campaign <- nil
	case "runlock":
		// What gocron users hand-roll: a lock held while the run lasts.
		opts = append(opts, gocron.WithDistributedLocker(runLocker{db}))
		task = say
		campaign <- nil
	}
	s, err := gocron.NewScheduler(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 2
	}
	// Every second, on the second: the nodes' ticks fire together
	// however their starts were skewed.
	if _, err := s.NewJob(gocron.CronJob("* * * * * *", true), gocron.NewTask(task), gocron.WithName(name)); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 2
	}
	s.Start()
	fmt.Println("ready")
	<-ctx.Done()
	_ = s.Shutdown()
	if err := <-campaign; err != nil {
		fmt.Fprintln(os.Stderr, "node: campaign:", err)
		return 1
	}
	return 0
}

// A run is one run of the job, as a node reported it.
type run struct {
	node string
	at   time.Time
}

// A cluster is three node processes.
type cluster struct {
	t     *testing.T
	procs map[string]*exec.Cmd
	stdin map[string]io.WriteCloser
	runs  chan run
}

func startCluster(t *testing.T, mode, driver, name string) *cluster {
	url := pgtest.URL(t)
	c := &cluster{t: t, procs: map[string]*exec.Cmd{}, stdin: map[string]io.WriteCloser{}, runs: make(chan run, 256)}
	t.Cleanup(c.stop)
	// Skewed starts: 0, 0.35 and 0.7 s apart.
	for i, id := range []string{"n0", "n1", "n2"} {
		if i > 0 {
			time.Sleep(350 * time.Millisecond) // the skew is the point: not a synchronisation
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), nodeEnv+"="+strings.Join([]string{mode, driver, name, id}, ","))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c.procs[id], c.stdin[id] = cmd, stdin
		if _, err := io.WriteString(stdin, url+"\n"); err != nil {
			t.Fatal(err)
		}
		ready := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				switch {
				case len(f) == 1 && f[0] == "ready":
					close(ready)
				case len(f) == 3 && f[0] == "run":
					ns, _ := strconv.ParseInt(f[2], 10, 64)
					c.runs <- run{node: f[1], at: time.Unix(0, ns)}
				}
			}
		}()
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			t.Fatalf("node %s not ready within 30s", id)
		}
	}
	return c
}

// collect returns the runs reported until n distinct ticks have run.
func (c *cluster) collect(n int) []run {
	c.t.Helper()
	var got []run
	ticks := map[int64]bool{}
	timeout := time.After(time.Duration(n)*time.Second + 30*time.Second)
	for len(ticks) < n {
		select {
		case r := <-c.runs:
			got = append(got, r)
			ticks[tick(r.at)] = true
		case <-timeout:
			c.t.Fatalf("only %d ticks ran in %ds", len(ticks), n+30)
		}
	}
	return got
}

// tick is the second a run belongs to: the scheduler fires on the second
// (a timer never fires early), and the run starts a little after — under
// a loaded machine, up to most of a second after.
func tick(at time.Time) int64 { return at.Truncate(time.Second).Unix() }

func (c *cluster) kill(id string) {
	c.t.Helper()
	if err := c.procs[id].Process.Kill(); err != nil {
		c.t.Fatal(err)
	}
	_ = c.procs[id].Wait()
	delete(c.procs, id)
}

// stop ends the nodes still running: their stdin closes, and they stop.
func (c *cluster) stop() {
	for id, cmd := range c.procs {
		c.stdin[id].Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				c.t.Errorf("node %s: %v", id, err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			c.t.Errorf("node %s did not stop within 20s", id)
		}
	}
}

// TestEveryTickOnce runs a one-second job on three nodes started 0.35 s
// apart, in both modes and with both drivers: every tick runs exactly
// once across the cluster, over more than 20 ticks, also after the node
// that ran the last tick (the leader, for the Elector) is killed.
func TestEveryTickOnce(t *testing.T) {
	for _, mode := range []string{"elector", "ticks"} {
		for _, driver := range pgtest.Drivers {
			t.Run(mode+"/"+driver, func(t *testing.T) {
				name := fmt.Sprintf("every-second-%s-%s-%d", mode, driver, time.Now().UnixNano())
				c := startCluster(t, mode, driver, name)
				before := c.collect(12)
				leader := before[len(before)-1].node
				c.kill(leader)
				killedAt := time.Now()
				after := c.collect(10)
				all := append(before, after...)
				checkOncePerTick(t, all)
				for _, r := range after {
					if r.node == leader && r.at.After(killedAt) {
						t.Fatalf("the killed node %s ran a tick after it was killed", leader)
					}
				}
				others := map[string]bool{}
				for _, r := range after {
					others[r.node] = true
				}
				t.Logf("%d ticks, each run once; node %s killed, then ran on %v", len(all), leader, keys(others))
			})
		}
	}
}

// TestRunLockRunsTicksTwice is the control: with a lock held only while
// a run lasts — the per-run locker gocron users write — a node whose tick
// fires after the first node's run ended runs the tick again, and the
// check above sees it.
func TestRunLockRunsTicksTwice(t *testing.T) {
	name := fmt.Sprintf("runlock-%d", time.Now().UnixNano())
	c := startCluster(t, "runlock", "pgx", name)
	runs := c.collect(5)
	per := map[int64]int{}
	for _, r := range runs {
		per[tick(r.at)]++
	}
	twice := 0
	for _, n := range per {
		if n > 1 {
			twice++
		}
	}
	if twice == 0 {
		t.Fatalf("every tick ran once with a per-run lock (%v): the cluster test could not tell", per)
	}
	t.Logf("with a per-run lock, %d of %d ticks ran more than once", twice, len(per))
}

// runLocker is a gocron.Locker holding a PostgreSQL lock while a run lasts.
type runLocker struct{ db *sql.DB }

func (r runLocker) Lock(ctx context.Context, key string) (gocron.Lock, error) {
	l, err := postgres.New(r.db, key)
	if err != nil {
		return nil, err
	}
	if err := l.Acquire(ctx); err != nil {
		return nil, err
	}
	return runLock{l}, nil
}

type runLock struct{ l *postgres.Locker }

func (r runLock) Unlock(ctx context.Context) error { return r.l.Release(ctx) }

// checkOncePerTick fails t unless each second from the first run to the
// last had exactly one run.
func checkOncePerTick(t *testing.T, runs []run) {
	t.Helper()
	per := map[int64][]string{}
	for _, r := range runs {
		per[tick(r.at)] = append(per[tick(r.at)], r.node)
	}
	ts := make([]int64, 0, len(per))
	for k := range per {
		ts = append(ts, k)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	if len(ts) < 20 {
		t.Fatalf("%d ticks, want at least 20", len(ts))
	}
	for s := ts[0]; s <= ts[len(ts)-1]; s++ {
		if n := len(per[s]); n != 1 {
			t.Errorf("tick %s ran %d times (%v), want exactly once", time.Unix(s, 0).UTC().Format("15:04:05"), n, per[s])
		}
	}
}

func keys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
