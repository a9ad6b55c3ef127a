package chaos

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestExplain pins the shapes of the two windows, and that nothing else —
// a server fault above all — explains an overlap.
func TestExplain(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	r := func(node string, from, to int) run { return run{node: node, start: at(from), end: at(to)} }
	for _, tc := range []struct {
		name   string
		a, b   run
		faults []fault
		cause  string
		late   bool
	}{
		{"restart: never a window",
			r("n1", 0, 1400), r("n2", 1300, 3000),
			[]fault{{Kind: RestartImmediate, At: at(1000), Till: at(1200)}}, "", false},
		{"failover: never a window",
			r("n1", 0, 1400), r("n2", 1300, 3000),
			[]fault{{Kind: Failover, At: at(1000), Till: at(1200)}}, "", false},
		{"crash-reset during a partition: never a window",
			r("n1", 0, 1400), r("n2", 1300, 3000),
			[]fault{{Kind: Partition, Node: "n1", At: at(900), Till: at(2000)}, {Kind: CrashReset, At: at(1000), Till: at(1100)}}, "", false},
		{"freeze: the new run started well into the freeze",
			r("n1", 0, 3100), r("n2", 2500, 5000),
			[]fault{{Kind: Freeze, Node: "n1", At: at(500), Till: at(3000)}}, WindowFreeze, false},
		{"freeze: the new run started too soon for the server to have freed the frozen session",
			r("n1", 0, 3100), r("n2", 1400, 5000),
			[]fault{{Kind: Freeze, Node: "n1", At: at(500), Till: at(3000)}}, "", false},
		{"freeze, then a terminate of the frozen node: the new run may start at once",
			r("n1", 0, 3100), r("n2", 620, 5000),
			[]fault{{Kind: Freeze, Node: "n1", At: at(500), Till: at(3000)}, {Kind: Terminate, Node: "n1", At: at(600), Till: at(601)}}, WindowFreeze, false},
		{"freeze: a node that read its grant before the freeze starts second, on resume",
			r("n2", 2500, 5000), r("n1", 3000, 3001),
			[]fault{{Kind: Freeze, Node: "n1", At: at(500), Till: at(3000)}}, WindowFreeze, false},
		{"freeze: a frozen node that started second, but before the resume",
			r("n2", 2500, 5000), r("n1", 2600, 3001),
			[]fault{{Kind: Freeze, Node: "n1", At: at(500), Till: at(3000)}}, "", false},
		{"freeze: the old run went on long after the resume",
			r("n1", 0, 5000), r("n2", 2500, 6000),
			[]fault{{Kind: Freeze, Node: "n1", At: at(500), Till: at(3000)}}, "", false},
		{"terminate of the first holder",
			r("n1", 0, 1150), r("n2", 1005, 3000),
			[]fault{{Kind: Terminate, Node: "n1", At: at(1000), Till: at(1001)}}, WindowTerminate, false},
		{"terminate of a holder that read its grant late and started second",
			r("n2", 1005, 3000), r("n1", 1010, 1250),
			[]fault{{Kind: Terminate, Node: "n1", At: at(1000), Till: at(1001)}}, WindowTerminate, true},
		{"terminate: the old run went on after its notice",
			r("n1", 0, 2500), r("n2", 1005, 3000),
			[]fault{{Kind: Terminate, Node: "n1", At: at(1000), Till: at(1001)}}, "", false},
		{"terminate, then a freeze before the holder could notice",
			r("n1", 0, 4100), r("n2", 1005, 5000),
			[]fault{{Kind: Terminate, Node: "n1", At: at(1000), Till: at(1001)}, {Kind: Freeze, Node: "n1", At: at(1050), Till: at(4000)}}, WindowTerminate, false},
		{"terminate of another node explains nothing",
			r("n1", 0, 1150), r("n2", 1005, 3000),
			[]fault{{Kind: Terminate, Node: "n3", At: at(1000), Till: at(1001)}}, "", false},
	} {
		cause, late := explain(tc.a, tc.b, tc.faults)
		if cause != tc.cause || late != tc.late {
			t.Errorf("%s: explain = %q, late %v; want %q, late %v", tc.name, cause, late, tc.cause, tc.late)
		}
	}
}

// TestStacks: the dump of a stuck node keeps goroutine headers and the
// frames of this module and the drivers, nothing else.
func TestStacks(t *testing.T) {
	path := t.TempDir() + "/node.err"
	dump := "SIGQUIT: quit\ngoroutine 1 [select]:\nruntime.gopark(...)\ngithub.com/onlyone-go/onlyone/supervise.(*Supervisor).Run(...)\ngithub.com/lib/pq.(*conn).recv(...)\n"
	if err := os.WriteFile(path, []byte(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	got := stacks(path)
	for _, want := range []string{"goroutine 1 [select]:", "supervise.(*Supervisor).Run", "lib/pq.(*conn).recv"} {
		if !strings.Contains(got, want) {
			t.Errorf("stacks lost %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "runtime.gopark") || strings.Contains(got, "SIGQUIT") {
		t.Errorf("stacks kept a line of no interest:\n%s", got)
	}
}

// TestServerDown: only server faults count, clipped to the interval.
func TestServerDown(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	faults := []fault{
		{Kind: CrashReset, At: at(500), Till: at(1500)},
		{Kind: Partition, Node: "n1", At: at(0), Till: at(3000)},
		{Kind: RestartFast, At: at(2500), Till: at(4000)},
	}
	if got, want := serverDown(faults, at(1000), at(3000)), 1000*time.Millisecond; got != want {
		t.Fatalf("serverDown = %v, want %v (500ms of the reset, 500ms of the restart)", got, want)
	}
}
