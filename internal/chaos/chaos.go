// Package chaos runs nodes of a real program that holds one lock, injects
// faults at random for a while, and checks the nodes' own records of when
// their work ran: no two nodes' work may overlap except in the two windows
// the locker/postgres package documents — a freeze (a process paused
// longer than the server waits for it) and an operator's terminate (a
// session the server frees at once) — and no leaderless interval may
// outlast the bound.
//
// The faults hit the nodes (SIGKILL, SIGTERM, SIGSTOP, a partition, an
// operator's pg_terminate_backend) and the server (a restart, immediate or
// fast; a crash-reset: one backend SIGKILLed, so that the postmaster ends
// every session and recovers; a failover: the primary shut down and a
// standby made by pg_basebackup promoted, behind the same address).
// Server faults free every lock at once, so an overlap around one is a
// failure, not a window. The nodes connect as an ordinary role, as on a
// managed service, with pgx and lib/pq in turn. Everything runs on
// loopback and stops by itself.
package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// Config says how much chaos.
type Config struct {
	Nodes    int           // how many nodes; default 5
	Duration time.Duration // how long to inject faults; default 1 minute
	Every    time.Duration // mean time between two faults; default 300ms
	// ServerEvery is the time between two server faults, which take turns:
	// immediate restart, fast restart, crash-reset, failover. Default 20s.
	ServerEvery time.Duration
	Drivers     []string  // database/sql drivers the nodes take in turn; default pgx, then lib/pq ("postgres")
	Seed        uint64    // of the random choices; 0: from the clock
	Self        string    // the binary to run as a node (NodeEnv set); default os.Executable()
	Log         io.Writer // progress; default none
}

// Fault kinds.
const (
	Kill      = "kill"      // SIGKILL a node; it is started again
	Term      = "term"      // SIGTERM a node; it is started again
	Freeze    = "freeze"    // SIGSTOP a node, SIGCONT after 0.1-4s
	Partition = "partition" // its proxy drops all traffic for 0.1-4s
	Terminate = "terminate" // pg_terminate_backend of the holder's session

	RestartImmediate = "restart-immediate" // the server stopped at once (a crash: no checkpoint), then started
	RestartFast      = "restart-fast"      // the server shut down fast (sessions ended, checkpoint), then started
	CrashReset       = "crash-reset"       // one backend SIGKILLed: the postmaster ends every session and recovers
	Failover         = "failover"          // the primary shut down, its standby promoted behind the same address
)

// serverKinds are the server faults, in the order they take turns.
var serverKinds = []string{RestartImmediate, RestartFast, CrashReset, Failover}

// nodeRole is the ordinary role the nodes connect as (no superuser, no
// pg_read_all_stats), as an application on managed PostgreSQL does.
const nodeRole = "onlyone_chaos"

// A fault is one injected fault, as the checker needs it.
type fault struct {
	Kind     string
	Node     string // "" for a server fault
	Leader   bool   // whether it hit the node that held the lock
	At, Till time.Time
}

type node struct {
	id     string
	driver string
	proxy  *faultproxy.Proxy
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Run runs the chaos and returns what the checker found.
func Run(cfg Config) (*Report, error) {
	if cfg.Nodes <= 0 {
		cfg.Nodes = 5
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Minute
	}
	if cfg.Every <= 0 {
		cfg.Every = 300 * time.Millisecond
	}
	if cfg.ServerEvery <= 0 {
		cfg.ServerEvery = 20 * time.Second
	}
	if len(cfg.Drivers) == 0 {
		cfg.Drivers = []string{"pgx", "postgres"}
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Self == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Self = self
	}
	srv, err := pglocal.Start()
	if err != nil {
		return nil, err
	}
	if srv.Kind != "local" {
		srv.Stop()
		return nil, fmt.Errorf("chaos: restarts and failovers need a local server, not a %s one", srv.Kind)
	}
	dir, err := os.MkdirTemp("", "onlyone-chaos-")
	if err != nil {
		srv.Stop()
		return nil, err
	}
	defer os.RemoveAll(dir)
	c := &controller{cfg: cfg, srv: srv, dir: dir, lock: fmt.Sprintf("chaos-%d", cfg.Seed),
		rnd: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))}
	defer c.stopServers()
	// The controller, too, reaches the primary through a proxy, so that it
	// follows a failover as the nodes do.
	if c.adminProxy, err = faultproxy.Start(srv.Addr()); err != nil {
		return nil, err
	}
	defer c.adminProxy.Close()
	if c.admin, err = sql.Open("pgx", srv.URLVia(c.adminProxy.Addr())); err != nil {
		return nil, err
	}
	defer c.admin.Close()
	if _, err := c.admin.Exec("CREATE ROLE " + nodeRole + " LOGIN"); err != nil {
		return nil, err
	}
	c.prepareStandby()
	for i := 0; i < cfg.Nodes; i++ {
		px, err := faultproxy.Start(srv.Addr())
		if err != nil {
			return nil, err
		}
		defer px.Close()
		n := &node{id: fmt.Sprintf("node-%d", i), driver: cfg.Drivers[i%len(cfg.Drivers)], proxy: px}
		c.nodes = append(c.nodes, n)
		if err := c.start(n); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(cfg.Log, "chaos: %d nodes (drivers %v in turn), %v of faults every ~%v (on the server every %v), seed %d\n",
		cfg.Nodes, cfg.Drivers, cfg.Duration, cfg.Every, cfg.ServerEvery, cfg.Seed)
	c.inject()
	// Let every fault end and every node settle, then stop them all.
	c.wg.Wait()
	for _, n := range c.nodes {
		c.stop(n, syscall.SIGTERM)
	}
	leaked := c.leaked()
	rep, err := check(c, leaked)
	if err != nil {
		return nil, err
	}
	rep.Seed = cfg.Seed
	rep.Stuck = c.stuck
	return rep, nil
}

type controller struct {
	cfg        Config
	admin      *sql.DB // superuser, through adminProxy
	adminProxy *faultproxy.Proxy
	dir        string
	lock       string
	nodes      []*node
	rnd        *rand.Rand

	srvMu    sync.Mutex
	srv      *pglocal.Server // the primary
	standby  *pglocal.Server // ready for a failover, or nil
	building bool            // a standby is being made

	mu     sync.Mutex
	faults []fault
	stuck  []string        // nodes that did not exit in time, with their goroutines
	busy   map[string]bool // nodes under a fault that lasts
	wg     sync.WaitGroup  // faults that last
}

func (c *controller) record(f fault) {
	c.mu.Lock()
	c.faults = append(c.faults, f)
	c.mu.Unlock()
}

// start starts n's process.
func (c *controller) start(n *node) error {
	cmd := exec.Command(c.cfg.Self)
	c.srvMu.Lock()
	url := c.srv.URLVia(n.proxy.Addr())
	c.srvMu.Unlock()
	url = strings.Replace(url, "postgres://postgres@", "postgres://"+nodeRole+"@", 1)
	cmd.Env = append(os.Environ(), NodeEnv+"="+n.id, "CHAOS_DRIVER="+n.driver, "CHAOS_URL="+url, "CHAOS_LOCK="+c.lock,
		"CHAOS_RECORD="+filepath.Join(c.dir, n.id+".rec"), "GORACE=atexit_sleep_ms=0", "GOTRACEBACK=all")
	// Its stderr, kept for the goroutine dump of a node that would not stop.
	errf, err := os.OpenFile(filepath.Join(c.dir, n.id+".err"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer errf.Close() // the child has its own descriptor
	cmd.Stderr = errf
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	return nil
}

// stopTimeout is how long a node may take to exit after a signal; one
// that takes longer is made to dump its goroutines (SIGQUIT), then killed,
// and reported as stuck with what it was doing.
const stopTimeout = 10 * time.Second

// stop sends sig to n's process and waits for it to exit.
func (c *controller) stop(n *node, sig syscall.Signal) {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	at := time.Now()
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
		return
	case <-time.After(stopTimeout):
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	c.mu.Lock()
	c.stuck = append(c.stuck, fmt.Sprintf("%s did not exit within %v of %v at %s; its goroutines then:\n%s",
		n.id, stopTimeout, sig, stamp(at), stacks(filepath.Join(c.dir, n.id+".err"))))
	c.mu.Unlock()
}

// serverLog returns the path of the primary's log: pglocal writes it
// next to the data directory.
func (c *controller) serverLog() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var data string
	if err := c.admin.QueryRowContext(ctx, "SHOW data_directory").Scan(&data); err != nil {
		return ""
	}
	return filepath.Join(filepath.Dir(data), "server.log")
}

// tail returns the last n lines of a file, indented.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "        " + strings.Join(lines, "\n        ")
}

// stacks returns the goroutine dump in a node's stderr, cut to the frames
// of this module, the driver and database/sql, at most 60 lines.
func stacks(path string) string {
	b, _ := os.ReadFile(path)
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "goroutine ") || strings.Contains(l, "onlyone") || strings.Contains(l, "database/sql.") ||
			strings.Contains(l, "lib/pq") || strings.Contains(l, "pgx") {
			keep = append(keep, "        "+l)
		}
	}
	if len(keep) > 60 {
		keep = keep[len(keep)-60:]
	}
	return strings.Join(keep, "\n")
}

// holder returns the node that holds the lock, or nil.
func (c *controller) holder() (*node, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h, err := postgres.WhoHolds(ctx, c.admin, c.lock)
	if err != nil || h == nil {
		return nil, 0
	}
	for _, n := range c.nodes {
		if n.id == h.ApplicationName {
			return n, h.PID
		}
	}
	return nil, 0
}

// nodeKinds are the faults on nodes, weighted by how often they are drawn.
var nodeKinds = []string{Kill, Kill, Term, Freeze, Freeze, Partition, Partition, Terminate, Terminate}

// inject injects faults until the duration is over.
func (c *controller) inject() {
	c.busy = map[string]bool{}
	end := time.Now().Add(c.cfg.Duration)
	lastServer, nextServer := time.Now(), 0
	for time.Now().Before(end) {
		time.Sleep(time.Duration(c.rnd.Int64N(int64(2 * c.cfg.Every)))) // the pace of faults: nothing to wait on
		if time.Since(lastServer) >= c.cfg.ServerEvery {
			kind := serverKinds[nextServer%len(serverKinds)]
			nextServer++
			f := fault{Kind: kind, At: time.Now()}
			logPath := c.serverLog() // before a failover changes the primary
			err := c.serverFault(kind)
			f.Till = time.Now()
			fmt.Fprintf(c.cfg.Log, "chaos: %s %s, %v until the primary took queries again\n", stamp(f.At), kind, f.Till.Sub(f.At).Round(time.Millisecond))
			if f.Till.Sub(f.At) > 10*time.Second {
				c.mu.Lock()
				c.stuck = append(c.stuck, fmt.Sprintf("the primary took queries again only %v after the %s at %s; its log then:\n%s",
					f.Till.Sub(f.At).Round(time.Millisecond), kind, stamp(f.At), tail(logPath, 30)))
				c.mu.Unlock()
			}
			if err != nil {
				fmt.Fprintf(c.cfg.Log, "chaos: %s: %v\n", kind, err)
				if kind == Failover {
					continue // no standby ready: nothing was done
				}
			}
			c.record(f)
			lastServer = f.Till
			continue
		}
		kind := nodeKinds[c.rnd.IntN(len(nodeKinds))]
		h, pid := c.holder()
		target, isLeader := h, h != nil
		if target == nil || c.rnd.IntN(4) == 0 { // mostly the leader, sometimes anyone
			target = c.nodes[c.rnd.IntN(len(c.nodes))]
			isLeader = target == h
		}
		c.mu.Lock()
		busy := c.busy[target.id]
		c.mu.Unlock()
		if busy && kind != Terminate {
			continue
		}
		f := fault{Kind: kind, Node: target.id, Leader: isLeader, At: time.Now()}
		switch kind {
		case Kill, Term:
			sig := syscall.SIGKILL
			if kind == Term {
				sig = syscall.SIGTERM
			}
			c.stop(target, sig)
			f.Till = time.Now()
			c.record(f)
			_ = c.start(target)
		case Freeze, Partition:
			d := 100*time.Millisecond + time.Duration(c.rnd.Int64N(int64(4*time.Second)))
			c.mu.Lock()
			c.busy[target.id] = true
			c.mu.Unlock()
			n := target
			n.mu.Lock()
			proc := n.cmd.Process
			n.mu.Unlock()
			if kind == Freeze {
				_ = proc.Signal(syscall.SIGSTOP)
			} else {
				n.proxy.Drop()
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				time.Sleep(d) // the fault's duration: nothing to wait on
				if kind == Freeze {
					_ = proc.Signal(syscall.SIGCONT)
				} else {
					n.proxy.Restore()
				}
				f.Till = time.Now()
				c.record(f)
				c.mu.Lock()
				delete(c.busy, n.id)
				c.mu.Unlock()
			}()
		case Terminate:
			if h == nil {
				continue
			}
			f.Node, f.Leader = h.id, true
			_, _ = c.admin.Exec("SELECT pg_terminate_backend($1)", pid)
			f.Till = time.Now()
			c.record(f)
		}
	}
}

// leaked reports whether any session still holds the lock once every node
// has stopped.
func (c *controller) leaked() int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		classid, objid := postgres.KeyParts(postgres.Key(c.lock))
		var n int
		err := c.admin.QueryRow(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1`, int64(classid), int64(objid)).Scan(&n)
		if err == nil && n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sortFaults orders faults by start.
func sortFaults(fs []fault) {
	sort.Slice(fs, func(i, j int) bool { return fs[i].At.Before(fs[j].At) })
}
