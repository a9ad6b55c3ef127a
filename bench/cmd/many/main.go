// Command many measures postgres.Session with many names: three node
// processes contend for the same names on one Session each, and the
// command measures the server connections per node, how the names spread
// at start and after a node joins, the idle statements per node, the
// graceful hand-over of one name, and the time until the last name of a
// SIGKILLed node runs elsewhere; and, for contrast, the same as one plain
// Locker per name. The work reports its own start and stop times; overlap
// is judged from them.
//
//	cd bench && go run ./cmd/many -md MANY.md
//
// It starts a throwaway PostgreSQL (internal/pglocal) with fsync on, on
// loopback, and removes it at the end.
package main

import (
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/onlyone-go/onlyone/bench/internal/pgfsync"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

const nodeEnv = "MANY_NODE"

func main() {
	if mode := os.Getenv(nodeEnv); mode != "" {
		n, _ := strconv.Atoi(os.Getenv("MANY_NAMES"))
		os.Exit(node(mode, os.Getenv("MANY_URL"), os.Getenv("MANY_PREFIX"), os.Getenv("MANY_ID"), n))
	}
	names := flag.Int("names", 1000, "names per node")
	nodes := flag.Int("nodes", 3, "nodes")
	trials := flag.Int("n", 10, "crash trials, and graceful hand-overs of one name")
	plain := flag.Int("plain", 100, "names per node for the plain-Locker contrast (one connection each)")
	idle := flag.Duration("idle", 10*time.Second, "how long to measure idle load")
	mdOut := flag.String("md", "", "where to write the Markdown report (default: stdout)")
	pngOut := flag.String("png", "many.png", "where to draw the takeover and hand-over distributions")
	flag.Parse()
	if err := run(*nodes, *names, *trials, *plain, *idle, *mdOut, *pngOut); err != nil {
		fmt.Fprintln(os.Stderr, "many:", err)
		os.Exit(1)
	}
}

// A report collects the figures.
type report struct {
	lines []string
}

func (r *report) addf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Fprintln(os.Stderr, line)
	r.lines = append(r.lines, line)
}

func run(nodes, names, trials, plain int, idle time.Duration, mdOut, pngOut string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	undo, err := pgfsync.On()
	if err != nil {
		return err
	}
	defer undo()
	srv, err := pglocal.Start()
	if err != nil {
		return err
	}
	defer srv.Stop()
	admin, err := sql.Open("pgx", srv.URL)
	if err != nil {
		return err
	}
	defer admin.Close()
	admin.SetMaxOpenConns(1)
	// A grant on a server up for less than SessionTimeout waits out the
	// rest of it (the restart quarantine); measure takeovers, not that.
	var up float64
	if err := admin.QueryRow("SELECT extract(epoch FROM now() - pg_postmaster_start_time())").Scan(&up); err != nil {
		return err
	}
	if wait := 11*time.Second - time.Duration(up*float64(time.Second)); wait > 0 {
		fmt.Fprintf(os.Stderr, "waiting %v: the server has just started (restart quarantine)\n", wait.Round(time.Second))
		time.Sleep(wait)
	}
	r := &report{}
	var pg, fsync string
	_ = admin.QueryRow("SELECT current_setting('server_version'), current_setting('fsync')").Scan(&pg, &fsync)
	host, _ := os.Hostname()
	r.addf("# Many singletons: %d nodes × %d names", nodes, names)
	r.addf("")
	r.addf("%s, %d CPUs, %s/%s, Go %s, PostgreSQL %s, fsync %s, loopback, pgx, default settings (HeartbeatInterval 1s, WaitChunk 2s). Run: `%s`.",
		host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), pg, fsync, "go run ./cmd/many "+strings.Join(os.Args[1:], " "))
	r.addf("")

	if err := sessions(r, self, srv.URL, admin, nodes, names, trials, idle, pngOut); err != nil {
		return err
	}
	if plain > 0 {
		if err := plainLockers(r, self, srv.URL, admin, nodes, plain, idle); err != nil {
			return err
		}
	}
	r.addf("## Notes")
	r.addf("")
	r.addf("- Takeover and hand-over times are from the old node's kill (by the bench) or its work's stop (by the node) to the new node's work start (by the node), all on one machine's clock.")
	r.addf("- The idle load of a Session is its heartbeat alone: one statement per HeartbeatInterval (1s), whatever the number of names, a little under 1/s because each beat waits 1s on the server and then does its work. The heartbeat's wait is also the watch over the next Session around the ring: it sleeps in 10ms steps and between them tries that Session's doorbell in shared mode, so there is no second waiting statement (the old design's watcher added one per WaitChunk, 0.5/s). The price is on the server: a try-lock and a wake-up every 10ms, the difference in idle server CPU per node between this design and the old one (most of either figure is the holding backend's client_connection_check_interval of 2ms). Like any statement the wait holds a snapshot, for at most HeartbeatInterval, as a plain Locker's heartbeat does.")
	r.addf("- Connections: each node's pool opens every connection with the node's application_name, so the count is all that a node costs the server: the Session's holding connection and its poker, an idle pinned connection that interrupts the heartbeat's wait when a name is released (the old design borrowed a third connection from the pool for that, and the pool kept it idle: it shows after the trials, once nodes have released names). Client backends: 3 nodes × 2 + the bench's own.")
	r.addf("- The plain contrast runs 100 names per node: 1,000 per node would need 3,000 connections, and the server allows 400.")
	r.addf("- Before the first node starts, the bench waits until the server has been up for 11s: a grant on a server up for less than SessionTimeout waits out the rest of it (the restart quarantine).")
	md := strings.Join(r.lines, "\n") + "\n"
	if mdOut == "" {
		fmt.Print(md)
		return nil
	}
	return os.WriteFile(mdOut, []byte(md), 0o644)
}

func sessions(r *report, self, url string, admin *sql.DB, nodes, names, trials int, idle time.Duration, pngOut string) error {
	c := newCluster(self, url, fmt.Sprintf("s%d", rand.Uint32()), "session", names)
	defer c.stop()
	r.addf("## One Session per node")
	r.addf("")
	began := time.Now()
	if err := c.startAll(nodes, names); err != nil {
		return err
	}
	allRun := time.Since(began)
	atStart := c.counts()
	settled := c.waitFor(60*time.Second, func() bool { s, n := c.spreadLocked(); return n == names && s <= 1 })
	r.addf("| measure | figure |")
	r.addf("|---|---|")
	r.addf("| every name runs, from the start of %d nodes | %v |", nodes, allRun.Round(time.Millisecond))
	r.addf("| names per node then | %v (max − min %d) |", atStart, spread(atStart))
	r.addf("| names per node after settling | %v (max − min %d, settled %v after the start) |", c.counts(), spread(c.counts()), ifs(settled, time.Since(began).Round(time.Millisecond).String(), "not within 60s"))

	conns, err := connections(admin, c.ids)
	if err != nil {
		return err
	}
	r.addf("| server connections per node (every backend with the node's application_name, which its pool's connections carry too) | %v |", conns)
	total, err := clientBackends(admin)
	if err != nil {
		return err
	}
	r.addf("| client backends on the server, all nodes and the bench's own | %d |", total)
	cpu0, err := backendCPU(admin, c.ids)
	if err != nil {
		return err
	}
	began = time.Now()
	rate, err := idleRate(admin, c.ids, idle)
	if err != nil {
		return err
	}
	cpu1, err := backendCPU(admin, c.ids)
	if err != nil {
		return err
	}
	r.addf("| idle statements per second per node (over %v) | %.2f |", idle, rate)
	if cpu0 >= 0 && cpu1 >= 0 {
		r.addf("| idle server CPU per node (its backends' user + system time, /proc) | %.2f%% of a core |", 100*(cpu1-cpu0).Seconds()/time.Since(began).Seconds()/float64(nodes))
	}

	// Crash trials: SIGKILL the busiest node; a new node replaces it.
	var crash, join []time.Duration
	var joinSpread []int
	for t := 0; t < trials; t++ {
		busiest, most := -1, -1
		c.mu.Lock()
		for i, n := range c.count {
			if !c.dead[i] && n > most {
				busiest, most = i, n
			}
		}
		c.mu.Unlock()
		killed, moved := c.kill(busiest)
		var last time.Time
		ok := c.waitFor(30*time.Second, func() bool {
			last = time.Time{}
			for _, name := range moved {
				n := c.open[name]
				if n == nil || n.start.Before(killed) {
					return false
				}
				if n.start.After(last) {
					last = n.start
				}
			}
			return true
		})
		if !ok {
			return fmt.Errorf("crash trial %d: the killed node's %d names did not all run elsewhere within 30s", t, len(moved))
		}
		crash = append(crash, last.Sub(killed))
		fmt.Fprintf(os.Stderr, "crash #%d: %d names run elsewhere after %v\n", t, len(moved), last.Sub(killed).Round(time.Millisecond))
		joined := time.Now()
		if _, err := c.start(); err != nil {
			return err
		}
		if !c.waitFor(60*time.Second, func() bool { s, n := c.spreadLocked(); return n == names && s <= 1 }) {
			joinSpread = append(joinSpread, spread(c.counts()))
			fmt.Fprintf(os.Stderr, "join #%d: not settled within 60s: %v\n", t, c.counts())
			continue
		}
		join = append(join, time.Since(joined))
		joinSpread = append(joinSpread, spread(c.counts()))
	}
	r.addf("| SIGKILL of the busiest node → the last of its names runs elsewhere (%d trials) | p50 %v, p90 %v, max %v |", len(crash), pct(crash, 50), pct(crash, 90), pct(crash, 100))
	r.addf("| a new node joins → spread max − min ≤ 1 (%d of %d trials settled) | p50 %v, p90 %v, max %v; max − min then %v |", len(join), trials, pct(join, 50), pct(join, 90), pct(join, 100), joinSpread)

	// Every node has released names by now (shed to the joiners): a
	// connection borrowed for a release would show.
	conns, err = connections(admin, c.ids)
	if err != nil {
		return err
	}
	r.addf("| server connections per node after the trials (every node released names) | %v |", conns)
	if total, err = clientBackends(admin); err != nil {
		return err
	}
	r.addf("| client backends on the server then, all nodes and the bench's own | %d |", total)

	// A graceful Close of one node: every name passes to the others.
	c.mu.Lock()
	victim := -1
	for i := range c.count {
		if !c.dead[i] {
			victim = i
		}
	}
	var its []int
	for name, iv := range c.open {
		if iv.node == victim {
			its = append(its, name)
		}
	}
	c.mu.Unlock()
	closing := time.Now()
	if err := c.send(victim, "close"); err != nil {
		return err
	}
	var last time.Time
	ok := c.waitFor(30*time.Second, func() bool {
		last = time.Time{}
		for _, name := range its {
			n := c.open[name]
			if n == nil || n.node == victim {
				return false
			}
			last = later(last, n.start)
		}
		return true
	})
	r.addf("| graceful Close of a node (%d names) → the last runs elsewhere | %s |", len(its), ifs(ok, last.Sub(closing).Round(time.Millisecond).String(), "not within 30s"))
	graceful := c.handovers()
	r.addf("| graceful hand-over of one name: its work stopped on one node → started on another, every hand-over of a shed name after a node joined and of the closed node's names (%d) | p50 %v, p90 %v, max %v |",
		len(graceful), pct(graceful, 50), pct(graceful, 90), pct(graceful, 100))
	n, worst := c.overlaps()
	r.addf("| overlaps (a name run by two nodes at once, by the nodes' own clocks) | %d (worst %v) |", n, worst)
	if pngOut != "" {
		err := plotCDF(pngOut, fmt.Sprintf("%d nodes × %d names, one Session each", nodes, names), map[string][]time.Duration{
			"SIGKILL of a node → the last of its names runs elsewhere": crash,
			"graceful hand-over of one name":                           graceful,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "many: plot:", err)
		} else {
			r.addf("")
			r.addf("![distributions](%s)", pngOut)
		}
	}
	r.addf("")
	return nil
}

func plainLockers(r *report, self, url string, admin *sql.DB, nodes, names int, idle time.Duration) error {
	c := newCluster(self, url, fmt.Sprintf("p%d", rand.Uint32()), "plain", names)
	defer c.stop()
	r.addf("## For contrast: one plain Locker (postgres.New) per name")
	r.addf("")
	r.addf("%d nodes × %d names: each Locker pins a connection, held or waiting, so %d × 1,000 names would need %d connections (this server allows 400).", nodes, names, nodes, nodes*1000)
	r.addf("")
	began := time.Now()
	if err := c.startAll(nodes, names); err != nil {
		return fmt.Errorf("plain: %w", err)
	}
	r.addf("| measure | figure |")
	r.addf("|---|---|")
	r.addf("| every name runs, from the start of %d nodes | %v |", nodes, time.Since(began).Round(time.Millisecond))
	r.addf("| names per node | %v |", c.counts())
	// Waiters connect in their own time: let them.
	c.waitFor(5*time.Second, func() bool { return false })
	conns, err := connections(admin, c.ids)
	if err != nil {
		return err
	}
	r.addf("| server connections per node | %v |", conns)
	rate, err := idleRate(admin, c.ids, idle)
	if err != nil {
		return err
	}
	r.addf("| idle statements per second per node (over %v) | %.2f |", idle, rate)
	r.addf("")
	return nil
}

func connections(admin *sql.DB, ids []string) ([]int, error) {
	var out []int
	for _, id := range ids {
		var n int
		if err := admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, id).Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			out = append(out, n)
		}
	}
	return out, nil
}

// backendCPU returns the CPU time the server's backends of the nodes
// ids have used so far, read from /proc (the server runs on this
// machine), or -1 where /proc does not show it.
func backendCPU(admin *sql.DB, ids []string) (time.Duration, error) {
	rows, err := admin.Query(`SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1)`, "{"+strings.Join(ids, ",")+"}")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var total time.Duration
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return 0, err
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return -1, nil
		}
		// After the command, in parentheses: fields 14 and 15 are utime
		// and stime, in clock ticks (100 per second on Linux).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if len(f) < 13 {
			return -1, nil
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+s) * 10 * time.Millisecond
	}
	return total, rows.Err()
}

func clientBackends(admin *sql.DB) (int, error) {
	var n int
	err := admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'`).Scan(&n)
	return n, err
}

// idleRate samples pg_stat_activity every 20ms for d and counts the
// statements the nodes' sessions started (a pid and query_start pair
// each), per node and second. (pg_stat_statements misses statements
// that end in an error, as every wait chunk does.)
func idleRate(admin *sql.DB, ids []string, d time.Duration) (float64, error) {
	seen := map[string]bool{}
	live := map[string]bool{}
	// Statements started before the window (the heartbeat in flight) are
	// not counted: by the server's clock, as query_start is.
	var from time.Time
	if err := admin.QueryRow(`SELECT clock_timestamp()`).Scan(&from); err != nil {
		return 0, err
	}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		rows, err := admin.Query(`SELECT application_name, pid::text || '@' || query_start::text FROM pg_stat_activity
			WHERE application_name = ANY($1) AND query_start >= $2`, "{"+strings.Join(ids, ",")+"}", from)
		if err != nil {
			return 0, err
		}
		for rows.Next() {
			var app, k string
			if err := rows.Scan(&app, &k); err != nil {
				rows.Close()
				return 0, err
			}
			seen[k] = true
			live[app] = true
		}
		rows.Close()
	}
	if len(live) == 0 {
		return 0, errors.New("no node's session seen")
	}
	return float64(len(seen)) / d.Seconds() / float64(len(live)), nil
}

func spread(counts []int) int {
	if len(counts) == 0 {
		return 0
	}
	return slices.Max(counts) - slices.Min(counts)
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))].Round(100 * time.Microsecond)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func ifs(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}
