// Command takeover measures, side by side and in one run, how fast each
// system replaces a leader that is taken down, and whether two leaders'
// work ever overlaps.
//
// Each trial starts three contender processes of one system, waits until
// one leads and the other two wait, takes the leader down — crash
// (SIGKILL), graceful (SIGTERM), freeze (SIGSTOP, SIGCONT after the
// takeover) or partition (its TCP proxy drops all traffic) — and measures
// the takeover: from the fault to the next contender's work starting. The
// work reports its own start and stop times; overlap is judged from them.
// The idle database load of the PostgreSQL systems is measured with
// pg_stat_statements.
//
//	cd bench && go run ./cmd/takeover -n 20 -md RESULTS.md
//
// It starts a throwaway PostgreSQL (internal/pglocal) and an embedded etcd,
// all on loopback, and removes them at the end.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/onlyone-go/onlyone/bench/internal/pgfsync"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

const contenderEnv = "BENCH_CONTENDER"

var allSystems = []string{"onlyone-pgx", "onlyone-pq", "raw", "etcd-2s", "etcd-60s"}
var allFaults = []string{"crash", "graceful", "freeze", "partition"}

func main() {
	if sys := os.Getenv(contenderEnv); sys != "" {
		os.Exit(contender(sys, os.Getenv("BENCH_ENDPOINT"), os.Getenv("BENCH_NAME"), os.Getenv("BENCH_ID")))
	}
	systems := flag.String("systems", strings.Join(allSystems, ","), "systems to measure")
	faults := flag.String("faults", strings.Join(allFaults, ","), "faults to inject")
	n := flag.Int("n", 20, "trials per system and fault")
	nSlow := flag.Int("n-slow", 5, "trials for the slow ones (freeze, partition, and anything on etcd-60s)")
	wait := flag.Duration("wait", 100*time.Second, "longest wait for a takeover on etcd-60s (others: 30s, raw: 20s)")
	jsonOut := flag.String("json", "results.json", "where to write every trial")
	mdOut := flag.String("md", "", "where to write the Markdown report (default: stdout)")
	pngOut := flag.String("png", "takeover.png", "where to draw the takeover distributions")
	idle := flag.Duration("idle", 10*time.Second, "how long to measure idle load")
	proxyAll := flag.Bool("proxy-all", false, "put the TCP proxy between contenders and server for every fault, not only partitions")
	fsync := flag.Bool("fsync", true, "run the server with fsync on, as in production (off: as the tests run it)")
	flag.Parse()

	cleanup := func() {}
	if *fsync {
		var err error
		if cleanup, err = pgfsync.On(); err != nil {
			fmt.Fprintln(os.Stderr, "takeover:", err)
			os.Exit(1)
		}
	}

	err := run(split(*systems), split(*faults), *n, *nSlow, *wait, *idle, *proxyAll, *jsonOut, *mdOut, *pngOut)
	cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "takeover:", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// env is what the trials run against.
type env struct {
	pg       *pglocal.Server
	etcdAddr string
	admin    *sql.DB
	self     string
	proxyAll bool // a proxy between every contender and its server, not only for partitions
}

func run(systems, faults []string, n, nSlow int, wait, idle time.Duration, proxyAll bool, jsonOut, mdOut, pngOut string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	srv, err := pglocal.Start()
	if err != nil {
		return err
	}
	defer srv.Stop()
	e := &env{pg: srv, self: self, proxyAll: proxyAll}
	e.admin, err = sql.Open("pgx", srv.URL)
	if err != nil {
		return err
	}
	defer e.admin.Close()
	e.admin.SetMaxIdleConns(1)
	if _, err := e.admin.Exec("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return err
	}
	for _, s := range systems {
		if strings.HasPrefix(s, "etcd") && e.etcdAddr == "" {
			addr, stop, err := startEtcd()
			if err != nil {
				return err
			}
			defer stop()
			e.etcdAddr = addr
		}
	}

	rep := &report{started: time.Now(), systems: systems, faults: faults, machine: machine(e.admin)}
	trials := func(sys, fault string) int {
		if fault == "freeze" || fault == "partition" || sys == "etcd-60s" {
			return nSlow
		}
		return n
	}
	// Systems take turns, trial by trial, so that a slow stretch of the
	// machine falls on all of them alike: the comparison is paired.
	for _, fault := range faults {
		for i := 0; i < n || i < nSlow; i++ {
			for _, sys := range systems {
				if i >= trials(sys, fault) {
					continue
				}
				r := e.trial(context.Background(), sys, fault, i, waitFor(sys, wait))
				fmt.Fprintf(os.Stderr, "%-12s %-10s #%-3d takeover %-12v overlap %v %s\n", sys, fault, i, r.Takeover, r.Overlap, r.Note)
				rep.trials = append(rep.trials, r)
			}
		}
	}
	for _, sys := range systems {
		if !strings.HasPrefix(sys, "etcd") {
			l, err := e.idleLoad(sys, idle)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%-12s idle: %.2f statements/s and %.1f connections per contender\n", sys, l.StatementsPerSecond, l.Connections)
			rep.idle = append(rep.idle, l)
		}
	}
	rep.finished = time.Now()
	if b, err := json.MarshalIndent(rep.trials, "", "  "); err == nil {
		_ = os.WriteFile(jsonOut, b, 0o644)
	}
	if err := rep.plot(pngOut); err != nil {
		fmt.Fprintln(os.Stderr, "takeover: plot:", err)
	}
	md := rep.markdown(strings.Join(os.Args, " "), pngOut)
	if mdOut == "" {
		fmt.Print(md)
		return nil
	}
	return os.WriteFile(mdOut, []byte(md), 0o644)
}

// machine describes where the run happened.
func machine(db *sql.DB) string {
	var pg, fsync string
	_ = db.QueryRow("SHOW server_version").Scan(&pg)
	_ = db.QueryRow("SHOW fsync").Scan(&fsync) // the server's word, not the flag's
	host, _ := os.Hostname()
	return fmt.Sprintf("%s, %d CPUs, %s/%s, Go %s, PostgreSQL %s (fsync %s, loopback)", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), pg, fsync)
}

// waitFor is how long to wait for a takeover in sys: a raw lock has no
// bound at all, so waiting long for it shows nothing more.
func waitFor(sys string, wait time.Duration) time.Duration {
	switch {
	case strings.HasPrefix(sys, "raw"):
		return 20 * time.Second
	case sys == "etcd-60s":
		return wait
	}
	return 30 * time.Second
}
