package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// trialResult is one measured takeover.
type trialResult struct {
	System, Fault string
	Trial         int
	Takeover      time.Duration // -1: none within the wait
	Overlap       time.Duration // the longest time two contenders' work ran at once
	Note          string
}

// proc is one contender process.
type proc struct {
	id     int
	cmd    *exec.Cmd
	proxy  *faultproxy.Proxy
	starts []time.Time
	stops  []time.Time
	killed time.Time     // when SIGKILLed, if it was
	read   chan struct{} // closed once its stdout is read to the end
}

type event struct {
	proc  int
	start bool
	at    time.Time
}

func (e *env) trial(ctx context.Context, sys, fault string, trial int, wait time.Duration) trialResult {
	// Only a partition needs a proxy between a contender and its server;
	// elsewhere it would add a network hop to every round trip (-proxy-all
	// keeps it, to measure with one).
	direct := fault != "partition" && !e.proxyAll
	r := trialResult{System: sys, Fault: fault, Trial: trial, Takeover: -1}
	name := fmt.Sprintf("bench-%s-%s-%d-%d", sys, fault, trial, time.Now().UnixNano())
	target := e.pg.Addr()
	if strings.HasPrefix(sys, "etcd") {
		target = e.etcdAddr
	}
	events := make(chan event, 64)
	var procs []*proc
	defer func() {
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
			p.proxy.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		px, err := faultproxy.Start(target)
		if err != nil {
			r.Note = err.Error()
			return r
		}
		addr := px.Addr()
		if direct {
			addr = target
		}
		endpoint := addr
		if !strings.HasPrefix(sys, "etcd") {
			endpoint = e.pg.URLVia(addr)
		}
		p := &proc{id: i, proxy: px, cmd: exec.Command(e.self), read: make(chan struct{})}
		p.cmd.Env = append(os.Environ(), contenderEnv+"="+sys, "BENCH_ENDPOINT="+endpoint, "BENCH_NAME="+name, "BENCH_ID="+fmt.Sprintf("c%d", i))
		out, _ := p.cmd.StdoutPipe()
		p.cmd.Stderr = os.Stderr
		if err := p.cmd.Start(); err != nil {
			r.Note = err.Error()
			return r
		}
		procs = append(procs, p)
		go func() {
			defer close(p.read)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) == 2 && (f[0] == "start" || f[0] == "stop") {
					ns, _ := strconv.ParseInt(f[1], 10, 64)
					events <- event{p.id, f[0] == "start", time.Unix(0, ns)}
				} else if len(f) > 0 {
					fmt.Fprintf(os.Stderr, "contender %s/%d: %s\n", sys, p.id, sc.Text())
				}
			}
		}()
	}
	record := func(ev event) {
		p := procs[ev.proc]
		if ev.start {
			p.starts = append(p.starts, ev.at)
		} else {
			p.stops = append(p.stops, ev.at)
		}
	}
	next := func(d time.Duration, want func(event) bool) (event, bool) {
		deadline := time.After(d)
		for {
			select {
			case ev := <-events:
				record(ev)
				if want(ev) {
					return ev, true
				}
			case <-deadline:
				return event{}, false
			}
		}
	}

	first, ok := next(60*time.Second, func(ev event) bool { return ev.start })
	if !ok {
		r.Note = "no leader within 60s"
		return r
	}
	if err := e.waitWaiting(ctx, sys, name, 2); err != nil {
		r.Note = err.Error()
		return r
	}
	leader := procs[first.proc]
	t0 := time.Now()
	switch fault {
	case "crash":
		leader.killed = t0
		_ = leader.cmd.Process.Signal(syscall.SIGKILL)
	case "graceful":
		_ = leader.cmd.Process.Signal(syscall.SIGTERM)
	case "freeze":
		_ = leader.cmd.Process.Signal(syscall.SIGSTOP)
	case "partition":
		leader.proxy.Drop()
	}
	took, ok := next(wait, func(ev event) bool { return ev.start && ev.proc != first.proc })
	if ok {
		r.Takeover = took.at.Sub(t0)
	} else {
		r.Note = fmt.Sprintf("no takeover within %v", wait)
	}
	// Let the old leader's work report its end: after SIGCONT, or when it
	// notices the partition; then judge overlap from the records.
	switch fault {
	case "freeze":
		_ = leader.cmd.Process.Signal(syscall.SIGCONT)
		if _, ok := next(15*time.Second, func(ev event) bool { return !ev.start && ev.proc == first.proc }); !ok {
			r.Note += " old leader's work never stopped after SIGCONT"
		}
	case "partition":
		if len(leader.stops) == 0 {
			if _, ok := next(15*time.Second, func(ev event) bool { return !ev.start && ev.proc == first.proc }); !ok {
				r.Note += " partitioned leader's work never stopped"
			}
		}
	case "graceful":
		// Read its output to the end before Wait, which closes the pipe:
		// otherwise a last "stop" line can be lost, and the work counted
		// as running on past the next one's start (a false overlap).
		select {
		case <-leader.read:
		case <-time.After(15 * time.Second):
			r.Note += " old leader's output did not end"
		}
		_ = leader.cmd.Wait()
	}
	end := time.Now()
	for drained := false; !drained; {
		select {
		case ev := <-events:
			record(ev)
		default:
			drained = true
		}
	}
	r.Overlap = overlap(procs, end)
	return r
}

// overlap returns the longest time two processes' work ran at once. Work
// that never reported its end ran until its process was killed, or until
// the end of the trial.
func overlap(procs []*proc, end time.Time) time.Duration {
	type iv struct{ from, to time.Time }
	byProc := make([][]iv, len(procs))
	for i, p := range procs {
		for k, s := range p.starts {
			to := end
			if k < len(p.stops) {
				to = p.stops[k]
			} else if !p.killed.IsZero() {
				to = p.killed
			}
			byProc[i] = append(byProc[i], iv{s, to})
		}
	}
	var worst time.Duration
	for i := range byProc {
		for j := i + 1; j < len(byProc); j++ {
			for _, a := range byProc[i] {
				for _, b := range byProc[j] {
					from, to := a.from, a.to
					if b.from.After(from) {
						from = b.from
					}
					if b.to.Before(to) {
						to = b.to
					}
					if d := to.Sub(from); d > worst {
						worst = d
					}
				}
			}
		}
	}
	return worst
}

// waitWaiting waits until n contenders wait for the lock on the server.
func (e *env) waitWaiting(ctx context.Context, sys, name string, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got, err := e.waiting(ctx, sys, name)
		if err == nil && got >= n {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%d contenders did not start waiting within 30s", n)
}

func (e *env) waiting(ctx context.Context, sys, name string) (int, error) {
	if strings.HasPrefix(sys, "etcd") {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.etcdAddr}, DialTimeout: 5 * time.Second})
		if err != nil {
			return 0, err
		}
		defer cli.Close()
		resp, err := cli.Get(ctx, "/bench/"+name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		return int(resp.Count) - 1, nil // the leader's key is there too
	}
	return postgres.Waiting(ctx, e.admin, name)
}

// idleLoad is the database's load from three idle contenders of sys.
type idleLoad struct {
	System              string
	StatementsPerSecond float64 // per contender
	Connections         float64 // per contender
}

func (e *env) idleLoad(sys string, d time.Duration) (idleLoad, error) {
	l := idleLoad{System: sys}
	name := fmt.Sprintf("bench-idle-%s-%d", sys, time.Now().UnixNano())
	var procs []*exec.Cmd
	defer func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	for i := 0; i < 3; i++ {
		c := exec.Command(e.self)
		c.Env = append(os.Environ(), contenderEnv+"="+sys, "BENCH_ENDPOINT="+e.pg.URL, "BENCH_NAME="+name, "BENCH_ID="+fmt.Sprintf("idle%d", i))
		c.Stdout, c.Stderr = nil, os.Stderr
		if err := c.Start(); err != nil {
			return l, err
		}
		procs = append(procs, c)
	}
	ctx := context.Background()
	if err := e.waitWaiting(ctx, sys, name, 2); err != nil {
		return l, err
	}
	// Count the contenders' statements by sampling pg_stat_activity: a
	// session shows the start time of its last statement until it runs the
	// next, and these contenders run one at most every half second, so
	// sampling every 20ms sees each one. (pg_stat_statements misses those
	// that end in an error, as every wait chunk does; the server's
	// transaction counters are flushed too lazily for a short window.)
	seen := map[string]bool{}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		rows, err := e.admin.Query(`SELECT pid::text || '@' || query_start::text FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND query_start IS NOT NULL`)
		if err != nil {
			return l, err
		}
		for rows.Next() {
			var k string
			if rows.Scan(&k) == nil {
				seen[k] = true
			}
		}
		rows.Close()
	}
	calls := float64(len(seen))
	var err error
	var conns float64
	err = e.admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
		AND pid <> pg_backend_pid() AND application_name <> ''`).Scan(&conns)
	if err != nil {
		return l, err
	}
	if strings.HasPrefix(sys, "raw") { // the raw contenders set no application_name
		err = e.admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
			AND pid <> pg_backend_pid() AND state IS NOT NULL AND query ILIKE '%pg_advisory_lock%'`).Scan(&conns)
		if err != nil {
			return l, err
		}
	}
	l.StatementsPerSecond = calls / d.Seconds() / 3
	l.Connections = conns / 3
	return l, nil
}
