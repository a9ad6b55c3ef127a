// Command chaos runs N nodes of a real program that holds one PostgreSQL
// lock, injects faults at random for a while, and checks the nodes' own
// records: see package internal/chaos. It exits 1 if it found an overlap
// outside the documented windows, a fencing-token inversion outside them,
// a leaked lock, an unreadable record or a leaderless interval over 40s
// while the primary took queries.
//
//	make chaos                       # 5 nodes, 10 minutes, a server fault every 20s
//	make chaos CHAOS_FLAGS='-duration 8m -every 200ms'
//	go run ./internal/chaos/cmd/chaos -nodes 5 -duration 2m -server-every 10s
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/onlyone-go/onlyone/internal/chaos"
)

func main() {
	if id := os.Getenv(chaos.NodeEnv); id != "" {
		os.Exit(chaos.Node(id, os.Getenv("CHAOS_DRIVER"), os.Getenv("CHAOS_URL"), os.Getenv("CHAOS_LOCK"), os.Getenv("CHAOS_RECORD")))
	}
	nodes := flag.Int("nodes", 5, "how many nodes")
	duration := flag.Duration("duration", 10*time.Minute, "how long to inject faults")
	every := flag.Duration("every", 300*time.Millisecond, "mean time between two faults")
	serverEvery := flag.Duration("server-every", 20*time.Second, "time between two server faults (restart immediate/fast, crash-reset, failover, in turn)")
	seed := flag.Uint64("seed", 0, "random seed (0: from the clock)")
	flag.Parse()
	rep, err := chaos.Run(chaos.Config{Nodes: *nodes, Duration: *duration, Every: *every, ServerEvery: *serverEvery, Seed: *seed, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	fmt.Print(rep)
	if !rep.OK() {
		os.Exit(1)
	}
}
