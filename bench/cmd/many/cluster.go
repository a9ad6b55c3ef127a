package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// An interval is when one node ran one name, by that node's clock (the
// same machine's). end is zero while it runs.
type interval struct {
	node       int
	start, end time.Time
	killed     bool // ended by a SIGKILL
}

// A cluster is node processes running the same names.
type cluster struct {
	self, url, prefix, mode string
	names                   int

	mu      sync.Mutex
	runs    map[int][]*interval // per name, in the order the starts arrived
	open    map[int]*interval   // per name: the run on a live node, if any
	count   []int               // names running per node
	dead    []bool
	closed  []chan struct{}
	procs   []*exec.Cmd
	stdins  []io.WriteCloser
	ids     []string
	changed chan struct{} // a start or stop arrived (buffered, 1)
	readers sync.WaitGroup
}

func newCluster(self, url, prefix, mode string, names int) *cluster {
	return &cluster{self: self, url: url, prefix: prefix, mode: mode, names: names,
		runs: map[int][]*interval{}, open: map[int]*interval{}, changed: make(chan struct{}, 1)}
}

// start starts a node and returns its number.
func (c *cluster) start() (int, error) {
	c.mu.Lock()
	i := len(c.procs)
	id := fmt.Sprintf("many-%s-%d", c.prefix, i)
	c.mu.Unlock()
	cmd := exec.Command(c.self)
	cmd.Env = append(os.Environ(), nodeEnv+"="+c.mode, "MANY_URL="+c.url, "MANY_PREFIX="+c.prefix,
		"MANY_ID="+id, "MANY_NAMES="+strconv.Itoa(c.names))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, cmd)
	c.stdins = append(c.stdins, in)
	c.ids = append(c.ids, id)
	c.count = append(c.count, 0)
	c.dead = append(c.dead, false)
	c.closed = append(c.closed, make(chan struct{}))
	c.mu.Unlock()
	c.readers.Add(1)
	go func() {
		defer c.readers.Done()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.event(i, sc.Text())
		}
	}()
	return i, nil
}

func (c *cluster) event(n int, line string) {
	f := strings.Fields(line)
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() {
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}()
	if line == "closed" {
		close(c.closed[n])
		return
	}
	if len(f) != 3 || (f[0] != "start" && f[0] != "stop") {
		fmt.Fprintf(os.Stderr, "node %d: %s\n", n, line)
		return
	}
	if c.dead[n] {
		return
	}
	name, _ := strconv.Atoi(f[1])
	ns, _ := strconv.ParseInt(f[2], 10, 64)
	at := time.Unix(0, ns)
	if f[0] == "start" {
		iv := &interval{node: n, start: at}
		c.runs[name] = append(c.runs[name], iv)
		c.open[name] = iv
		c.count[n]++
		return
	}
	for _, iv := range c.runs[name] {
		if iv.node == n && iv.end.IsZero() {
			iv.end = at
			c.count[n]--
			if c.open[name] == iv {
				delete(c.open, name)
			}
		}
	}
}

// kill SIGKILLs node n and returns the kill time and the names it ran,
// whose runs end then: a killed process runs nothing.
func (c *cluster) kill(n int) (time.Time, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.procs[n].Process.Signal(syscall.SIGKILL)
	at := time.Now()
	c.dead[n] = true
	var names []int
	for name, runs := range c.runs {
		for _, iv := range runs {
			if iv.node == n && iv.end.IsZero() {
				iv.end, iv.killed = at, true
				names = append(names, name)
				if c.open[name] == iv {
					delete(c.open, name)
				}
			}
		}
	}
	c.count[n] = 0
	return at, names
}

// send writes a command to node n.
func (c *cluster) send(n int, cmd string) error {
	_, err := io.WriteString(c.stdins[n], cmd+"\n")
	return err
}

// startAll starts n nodes and waits, for at most 60s, until every one of
// the names runs on one of them.
func (c *cluster) startAll(n, names int) error {
	for i := 0; i < n; i++ {
		if _, err := c.start(); err != nil {
			return err
		}
	}
	if !c.waitFor(60*time.Second, func() bool { _, r := c.spreadLocked(); return r == names }) {
		return fmt.Errorf("after 60s not every name ran: %v", c.counts())
	}
	return nil
}

// waitFor waits until cond holds (checked under c.mu after every event),
// for at most d.
func (c *cluster) waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-c.changed:
		case <-tick.C:
		case <-deadline.C:
			return false
		}
	}
}

// spreadLocked returns max − min of the names run by the live nodes, and
// how many run in all.
func (c *cluster) spreadLocked() (spread, running int) {
	lo, hi := c.names+1, -1
	for i, n := range c.count {
		if c.dead[i] {
			continue
		}
		lo, hi = min(lo, n), max(hi, n)
		running += n
	}
	return hi - lo, running
}

// counts returns the names per live node.
func (c *cluster) counts() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i, n := range c.count {
		if !c.dead[i] {
			out = append(out, n)
		}
	}
	return out
}

// overlaps counts the pairs of runs of one name by two nodes at once.
func (c *cluster) overlaps() (n int, worst time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, runs := range c.runs {
		rs := append([]*interval(nil), runs...)
		sort.Slice(rs, func(i, j int) bool { return rs[i].start.Before(rs[j].start) })
		for i := 1; i < len(rs); i++ {
			prev := rs[i-1]
			if prev.end.IsZero() || prev.end.After(rs[i].start) {
				if prev.node == rs[i].node {
					continue
				}
				n++
				end := prev.end
				if end.IsZero() {
					end = time.Now()
				}
				worst = max(worst, end.Sub(rs[i].start))
			}
		}
	}
	return n, worst
}

// handovers returns, for every run of a name that ended by its node's own
// stop (not a kill) and was followed by a run on another node, the time
// from that stop to that start.
func (c *cluster) handovers() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for _, runs := range c.runs {
		rs := append([]*interval(nil), runs...)
		sort.Slice(rs, func(i, j int) bool { return rs[i].start.Before(rs[j].start) })
		for i := 1; i < len(rs); i++ {
			prev := rs[i-1]
			if prev.killed || prev.end.IsZero() || prev.node == rs[i].node {
				continue
			}
			out = append(out, rs[i].start.Sub(prev.end))
		}
	}
	return out
}

// stop kills every node and waits for their output to end.
func (c *cluster) stop() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for _, p := range procs {
		_ = p.Process.Kill()
		_ = p.Wait()
	}
	c.readers.Wait()
}
