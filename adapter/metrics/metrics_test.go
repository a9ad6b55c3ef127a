package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/onlyone-go/onlyone/adapter/internal/pgtest"
	"github.com/onlyone-go/onlyone/adapter/metrics"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// A node is one process of a cluster: a supervisor whose metrics are
// served over HTTP from a registry of its own, and a hook of the test's
// chained after the collector's, as a program's own OnEvent would be.
type node struct {
	srv    *httptest.Server
	s      *supervise.Supervisor
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	counts map[supervise.EventKind]int
	wake   chan struct{}
}

func startNode(t *testing.T, l *postgres.Locker, name string) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	col := metrics.New()
	reg.MustRegister(col)
	n := &node{
		srv:    httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})),
		counts: map[supervise.EventKind]int{},
		wake:   make(chan struct{}),
		done:   make(chan error, 1),
	}
	t.Cleanup(n.srv.Close)
	n.s = &supervise.Supervisor{OnEvent: n.own}
	n.s.OnEvent = col.Hook(name, n.s.OnEvent)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		n.done <- n.s.Run(ctx, l, func(ctx context.Context) error { <-ctx.Done(); return nil })
	}()
	t.Cleanup(func() { n.stop(t) })
	return n
}

func (n *node) own(e supervise.Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.counts[e.Kind]++
	close(n.wake)
	n.wake = make(chan struct{})
}

// waitFor waits until the node has seen k events of kind, or fails t.
func (n *node) waitFor(t *testing.T, kind supervise.EventKind, k int) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		n.mu.Lock()
		got, wake := n.counts[kind], n.wake
		n.mu.Unlock()
		if got >= k {
			return
		}
		select {
		case <-wake:
		case <-timeout:
			t.Fatalf("no %d× %v within 30s (saw %d)", k, kind, got)
		}
	}
}

func (n *node) stop(t *testing.T) {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	if err := <-n.done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// scrape returns the node's metrics as Prometheus serves them.
func (n *node) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(n.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mustHave fails t unless the scrape has line.
func mustHave(t *testing.T, who, scrape, line string) {
	t.Helper()
	for _, l := range strings.Split(scrape, "\n") {
		if l == line {
			return
		}
	}
	t.Fatalf("%s: the scrape has no line %q:\n%s", who, line, scrape)
}

// TestScrape runs two nodes on a real PostgreSQL lock and scrapes them:
// the leader reports leader_election_master_status 1 and the other 0;
// after a hand-over and a lost session the gauges and counters follow.
func TestScrape(t *testing.T) {
	for _, driver := range pgtest.Drivers {
		t.Run(driver, func(t *testing.T) {
			db := pgtest.Open(t, driver)
			name := fmt.Sprintf("metrics-%s-%d", driver, time.Now().UnixNano())
			var nodes [2]*node
			for i := range nodes {
				l, err := postgres.New(db, name, postgres.WithIdentity(fmt.Sprintf("node%d", i)),
					postgres.WithHeartbeatInterval(100*time.Millisecond), postgres.WithLossTimeout(500*time.Millisecond), postgres.WithGrace(500*time.Millisecond))
				if err != nil {
					t.Fatal(err)
				}
				nodes[i] = startNode(t, l, name)
			}
			leader := waitLeader(t, nodes, 1)
			other := nodes[1-leader]
			gauge := `leader_election_master_status{name="` + name + `"} `
			mustHave(t, "leader", nodes[leader].scrape(t), gauge+"1")
			mustHave(t, "other", other.scrape(t), gauge+"0")
			mustHave(t, "leader", nodes[leader].scrape(t), `onlyone_acquisitions_total{name="`+name+`"} 1`)
			mustHave(t, "other", other.scrape(t), `onlyone_acquisitions_total{name="`+name+`"} 0`)

			// A deploy: the leader shuts down, the other takes over.
			nodes[leader].stop(t)
			other.waitFor(t, supervise.EventAcquired, 1)
			old := nodes[leader].scrape(t)
			mustHave(t, "old leader", old, gauge+"0")
			mustHave(t, "old leader", old, `onlyone_holds_ended_total{cause="shutdown",name="`+name+`"} 1`)
			mustHave(t, "old leader", old, `onlyone_hold_seconds_count{name="`+name+`"} 1`)
			mustHave(t, "new leader", other.scrape(t), gauge+"1")
			mustHave(t, "new leader", other.scrape(t), `onlyone_wait_seconds_count{name="`+name+`"} 1`)

			// An operator (here the same role) ends the new leader's
			// session: the gauge drops and the loss is counted.
			h, err := postgres.WhoHolds(context.Background(), db, name)
			if err != nil || h == nil {
				t.Fatalf("WhoHolds = %v, %v", h, err)
			}
			if _, err := db.Exec("SELECT pg_terminate_backend($1)", h.PID); err != nil {
				t.Fatal(err)
			}
			other.waitFor(t, supervise.EventReleased, 1)
			after := other.scrape(t)
			mustHave(t, "leader that lost", after, `onlyone_holds_ended_total{cause="lost",name="`+name+`"} 1`)
			other.waitFor(t, supervise.EventAcquired, 2) // nobody else wants it: back again
			mustHave(t, "leader again", other.scrape(t), gauge+"1")
			mustHave(t, "leader again", other.scrape(t), `onlyone_acquisitions_total{name="`+name+`"} 2`)
		})
	}
}

// waitLeader waits until exactly one node has acquired k times, and
// returns it.
func waitLeader(t *testing.T, nodes [2]*node, k int) int {
	t.Helper()
	got := make(chan int, 2)
	for i, n := range nodes {
		go func() {
			for {
				n.mu.Lock()
				c, wake := n.counts[supervise.EventAcquired], n.wake
				n.mu.Unlock()
				if c >= k {
					got <- i
					return
				}
				select {
				case <-wake:
				case <-time.After(30 * time.Second):
					return
				}
			}
		}()
	}
	select {
	case i := <-got:
		return i
	case <-time.After(30 * time.Second):
		t.Fatal("no node acquired the lock within 30s")
		return -1
	}
}

// TestHookChains checks that a hook calls the hook it wraps, for every
// event, in order.
func TestHookChains(t *testing.T) {
	var seen []supervise.EventKind
	col := metrics.New()
	h := col.Hook("chain", func(e supervise.Event) { seen = append(seen, e.Kind) })
	h = col.Hook("chain-outer", h)
	for _, k := range []supervise.EventKind{supervise.EventAcquired, supervise.EventStopping, supervise.EventChildExited, supervise.EventReleased} {
		h(supervise.Event{Kind: k, Time: time.Now()})
	}
	if want := "[acquired stopping child-exited released]"; fmt.Sprint(seen) != want {
		t.Fatalf("the wrapped hook saw %v, want %s", seen, want)
	}
}
