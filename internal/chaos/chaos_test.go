package chaos_test

import (
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/chaos"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) {
	if id := os.Getenv(chaos.NodeEnv); id != "" {
		os.Exit(chaos.Node(id, os.Getenv("CHAOS_DRIVER"), os.Getenv("CHAOS_URL"), os.Getenv("CHAOS_LOCK"), os.Getenv("CHAOS_RECORD")))
	}
	goleak.VerifyTestMain(pglocal.Main(m))
}

// TestChaos is a short version of make chaos: every kind of fault, each
// server fault at least once, and the nodes' records must show nothing the
// invariant rules out.
func TestChaos(t *testing.T) {
	pglocal.Shared(t) // skip or fail as the environment says
	if os.Getenv(pglocal.EnvURL) != "" {
		t.Skip("chaos crashes its server: it needs local PostgreSQL binaries")
	}
	rep, err := chaos.Run(chaos.Config{Nodes: 3, Duration: 35 * time.Second, Every: 250 * time.Millisecond,
		ServerEvery: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.String())
	if !rep.OK() {
		t.Fatal("the chaos run found what the invariant rules out")
	}
	total := 0
	for _, n := range rep.Faults {
		total += n
	}
	if total < 30 || rep.Takeovers < 10 {
		t.Fatalf("%d faults and %d takeovers: too few to mean anything", total, rep.Takeovers)
	}
	for _, k := range []string{chaos.RestartImmediate, chaos.RestartFast, chaos.CrashReset, chaos.Failover} {
		if rep.Faults[k] == 0 {
			t.Errorf("no %s in the run", k)
		}
	}
}
