package postgres_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// sessionHelper is a node: one Session, HELPER_N names called name.0 …,
// each run by a loop that acquires it, prints "start I UNIXNANO", waits
// for Lost, prints "stop I UNIXNANO" and releases it. A line "close" on
// stdin stops every loop, closes the Session and prints "closed".
func sessionHelper(ctx context.Context, db *sql.DB, prefix string) int {
	n, _ := strconv.Atoi(os.Getenv("HELPER_N"))
	s, err := postgres.NewSession(db, append(fast, postgres.WithIdentity(os.Getenv("HELPER_ID")))...)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		l, err := s.Locker(fmt.Sprintf("%s.%d", prefix, i))
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := l.Acquire(ctx); err != nil {
					select {
					case <-ctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
					continue
				}
				fmt.Printf("start %d %d\n", i, time.Now().UnixNano())
				select {
				case <-l.Lost():
				case <-ctx.Done():
				}
				fmt.Printf("stop %d %d\n", i, time.Now().UnixNano())
				_ = l.Release(context.Background())
			}
		}()
	}
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	cancel()
	wg.Wait()
	if err := s.Close(); err != nil {
		fmt.Println("error", err)
	}
	fmt.Println("closed")
	return 0
}

// A node is a running sessionHelper, seen from the test.
type node struct {
	id    string
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// A cluster is some nodes running the same names, and what they said.
type cluster struct {
	t     *testing.T
	e     *env
	names int

	mu        sync.Mutex
	running   map[int]int // name → node running it (-1 none); overlap when two
	count     []int       // names running per node
	overlap   []string
	lastStart time.Time
	closed    map[int]chan struct{}
	frozen    map[int]bool // a node's events are ignored while it is frozen or dead
	lateStops []time.Time  // when a frozen node, resumed, stopped its names
	nodes     []*node
}

func newCluster(t *testing.T, e *env, names int) *cluster {
	return &cluster{t: t, e: e, names: names, running: map[int]int{}, closed: map[int]chan struct{}{}, frozen: map[int]bool{}}
}

func (c *cluster) start(prefix string) int {
	t := c.t
	i := len(c.nodes)
	id := fmt.Sprintf("node%d-%s", i, prefix[len(prefix)-8:])
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", helperEnv+"=session", "HELPER_DRIVER="+c.e.driver,
		"HELPER_URL="+withApp(c.e.srv.URL, id), "HELPER_NAME="+prefix, "HELPER_N="+strconv.Itoa(c.names), "HELPER_ID="+id)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, &node{id: id, cmd: cmd, stdin: in})
	c.count = append(c.count, 0)
	c.closed[i] = make(chan struct{})
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.event(i, sc.Text())
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		<-done
	})
	return i
}

func (c *cluster) event(n int, line string) {
	f := strings.Fields(line)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case len(f) == 3 && f[0] == "start":
		if c.frozen[n] {
			return
		}
		name, _ := strconv.Atoi(f[1])
		if o, ok := c.running[name]; ok && o != n {
			c.overlap = append(c.overlap, fmt.Sprintf("name %d started on node %d while node %d ran it", name, n, o))
		}
		c.running[name] = n
		c.count[n]++
		c.lastStart = time.Now()
	case len(f) == 3 && f[0] == "stop":
		if c.frozen[n] {
			ns, _ := strconv.ParseInt(f[2], 10, 64)
			c.lateStops = append(c.lateStops, time.Unix(0, ns))
			return
		}
		name, _ := strconv.Atoi(f[1])
		if c.running[name] == n {
			delete(c.running, name)
			c.count[n]--
		}
	case line == "closed":
		close(c.closed[n])
	default:
		c.t.Logf("node %d: %s", n, line)
	}
}

// drop forgets what node n runs: it was killed or frozen, so it runs
// nothing from now on (a frozen process runs no code).
func (c *cluster) drop(n int) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frozen[n] = true
	var names []int
	for name, o := range c.running {
		if o == n {
			names = append(names, name)
			delete(c.running, name)
		}
	}
	c.count[n] = 0
	return names
}

// snapshot returns how many names run, and per node.
func (c *cluster) snapshot() (int, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.running), append([]int(nil), c.count...)
}

// settle waits until all names run and the spread (max − min over the
// live nodes) is at most spread.
func (c *cluster) settle(d time.Duration, spread int, live ...int) []int {
	c.t.Helper()
	var counts []int
	deadline := time.Now().Add(d)
	for {
		n, all := c.snapshot()
		counts = counts[:0]
		for _, i := range live {
			counts = append(counts, all[i])
		}
		sort.Ints(counts)
		if n == c.names && counts[len(counts)-1]-counts[0] <= spread {
			return all
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %v: %d of %d names run, per node %v (want max − min ≤ %d)", d, n, c.names, all, spread)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) checkOverlap() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range c.overlap {
		c.t.Error(o)
	}
}

// TestSessionNodes runs 3 node processes × 300 names: each name runs on
// exactly one node, no node has more than 2 server connections (every
// connection of the node's pool carries its name, pinned or not), names
// spread, and they move without overlap when the busiest node is
// SIGKILLed, another is SIGSTOPped and the last one closes its Session.
func TestSessionNodes(t *testing.T) {
	const names = 300
	forEachDriver(t, func(t *testing.T, e *env) {
		c := newCluster(t, e, names)
		prefix := uniqueName(t)
		for i := 0; i < 3; i++ {
			c.start(prefix)
		}
		counts := c.settle(30*time.Second, 30, 0, 1, 2)
		t.Logf("spread over 3 nodes: %v", counts)
		for _, n := range c.nodes {
			if got := e.sessions(t, n.id); got > 2 {
				t.Errorf("node %s has %d server connections, want at most 2", n.id, got)
			}
		}
		c.checkOverlap()

		// SIGKILL the busiest node.
		busiest := 0
		for i, n := range counts {
			if n > counts[busiest] {
				busiest = i
			}
		}
		others := []int{}
		for i := range c.nodes {
			if i != busiest {
				others = append(others, i)
			}
		}
		killed := time.Now()
		if err := c.nodes[busiest].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		moved := c.drop(busiest)
		c.settle(10*time.Second, names, others...)
		c.mu.Lock()
		took := c.lastStart.Sub(killed)
		c.mu.Unlock()
		t.Logf("SIGKILL of the busiest node (%d names): all run elsewhere after %v", len(moved), took)
		if took > 2*time.Second {
			t.Errorf("the killed node's names ran elsewhere after %v, want ≤ 2s", took)
		}
		counts = c.settle(15*time.Second, 30, others...)
		t.Logf("spread over 2 nodes: %v", counts)
		c.checkOverlap()

		// SIGSTOP one of the others: its names move after the server bound.
		frozen, last := others[0], others[1]
		p := c.nodes[frozen].cmd.Process
		stopped := time.Now()
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		moved = c.drop(frozen)
		c.settle(15*time.Second, names, last)
		c.mu.Lock()
		took = c.lastStart.Sub(stopped)
		c.mu.Unlock()
		t.Logf("SIGSTOP of a node (%d names): all run elsewhere after %v", len(moved), took)
		if took < 1500*time.Millisecond {
			// fast: LossTimeout 600ms + Grace 600ms; the server ends the
			// frozen session after SessionTimeout 2.2s.
			t.Errorf("a frozen node's names moved after %v, before its grace ended", took)
		}
		resumed := time.Now()
		if err := p.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		// Resumed, the node must stop every name it ran at once: its loss
		// deadline passed long ago.
		eventually(t, 5*time.Second, "the resumed node stops its names", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return len(c.lateStops) >= len(moved)
		})
		c.mu.Lock()
		latest := slices.MaxFunc(c.lateStops, time.Time.Compare)
		c.mu.Unlock()
		t.Logf("resumed after %v frozen, the node stopped its %d names within %v", resumed.Sub(stopped).Round(time.Millisecond), len(moved), latest.Sub(resumed))
		if latest.Sub(resumed) > time.Second {
			t.Errorf("the resumed node ran names %v after SIGCONT, which others ran", latest.Sub(resumed))
		}
		c.checkOverlap()
		_ = c.nodes[frozen].cmd.Process.Kill()

		// A new node joins; then the last old one closes its Session:
		// every name passes to the new one.
		joined := c.start(prefix)
		counts = c.settle(15*time.Second, 30, last, joined)
		t.Logf("spread after a node joined: %v", counts)
		closing := time.Now()
		if _, err := io.WriteString(c.nodes[last].stdin, "close\n"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.closed[last]:
		case <-time.After(15 * time.Second):
			t.Fatal("the node did not close")
		}
		c.settle(10*time.Second, names, joined)
		c.mu.Lock()
		took = c.lastStart.Sub(closing)
		c.mu.Unlock()
		t.Logf("graceful Close: all names on the other node after %v", took)
		c.checkOverlap()
	})
}

var _ = context.Background
