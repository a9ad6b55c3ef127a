// Package metrics exports the state of onlyone supervisors as Prometheus
// metrics.
//
// One Collector serves any number of supervisors, each under a name (the
// lock's name is the usual choice). Its hook follows a Supervisor's
// events and chains to the hook that was there before, so a program's
// own OnEvent keeps working:
//
//	col := metrics.New()
//	prometheus.MustRegister(col)
//	s := &supervise.Supervisor{OnEvent: myHook}
//	s.OnEvent = col.Hook("nightly-billing", s.OnEvent) // records, then calls myHook
//
// Hooks chain in the same way to any depth: each calls the one it wraps
// after recording the event, from the supervisor's goroutine, in order.
//
// The metrics:
//
//	leader_election_master_status{name}        gauge: 1 while this supervisor holds the lock, 0 otherwise
//	onlyone_acquisitions_total{name}            counter: locks acquired
//	onlyone_acquire_errors_total{name}          counter: acquisitions that failed (the backend erred)
//	onlyone_holds_ended_total{name,cause}       counter: holds ended, by cause: lost (taken away or
//	                                            no longer vouched for), shutdown, child_exited
//	onlyone_stuck_children_total{name}          counter: children that did not stop within ShutdownTimeout
//	onlyone_restarts_total{name}                counter: children restarted by the restart policy
//	onlyone_wait_seconds{name}                  histogram: from starting to wait for the lock to acquiring it
//	onlyone_hold_seconds{name}                  histogram: from acquiring the lock to releasing it
//
// leader_election_master_status has the name, label and meaning of
// Kubernetes client-go's leader-election gauge, so dashboards and alerts
// written for client-go work unchanged. It is 1 from the acquisition until
// the lock is lost or released; after a loss it drops to 0 at once, while
// the child may still be stopping.
//
// A lock counts as held, here as in package supervise, from a successful
// Acquire until the loss or the release. A wait is counted from the
// supervisor's first EventWaiting after it was without the lock (or from
// the Hook call, if it reports none).
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onlyone-go/onlyone/supervise"
)

// Causes of onlyone_holds_ended_total.
const (
	CauseLost        = "lost"
	CauseShutdown    = "shutdown"
	CauseChildExited = "child_exited"
)

// A Collector holds the metrics of the supervisors hooked to it. It is a
// prometheus.Collector: register it once. Its methods may be called from
// any goroutine.
type Collector struct {
	master      *prometheus.GaugeVec
	acquired    *prometheus.CounterVec
	acquireErrs *prometheus.CounterVec
	ended       *prometheus.CounterVec
	stuck       *prometheus.CounterVec
	restarts    *prometheus.CounterVec
	wait        *prometheus.HistogramVec
	hold        *prometheus.HistogramVec
}

var _ prometheus.Collector = (*Collector)(nil)

// Buckets of the wait and hold histograms, in seconds: from a
// millisecond (a takeover after a crash) to a day (a long hold).
var Buckets = []float64{.001, .005, .025, .1, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400}

// New returns a Collector with no supervisors yet.
func New() *Collector {
	name := []string{"name"}
	return &Collector{
		master: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "leader_election_master_status",
			Help: "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.",
		}, name),
		acquired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onlyone_acquisitions_total", Help: "Locks acquired by the supervisor.",
		}, name),
		acquireErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onlyone_acquire_errors_total", Help: "Acquisitions that failed because the lock backend returned an error.",
		}, name),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onlyone_holds_ended_total", Help: "Holds of the lock that ended, by cause: lost, shutdown or child_exited.",
		}, []string{"name", "cause"}),
		stuck: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onlyone_stuck_children_total", Help: "Children that did not stop within the shutdown timeout.",
		}, name),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onlyone_restarts_total", Help: "Children restarted by the restart policy.",
		}, name),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "onlyone_wait_seconds", Help: "Time from starting to wait for the lock to acquiring it.", Buckets: Buckets,
		}, name),
		hold: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "onlyone_hold_seconds", Help: "Time from acquiring the lock to releasing it.", Buckets: Buckets,
		}, name),
	}
}

func (c *Collector) vecs() []prometheus.Collector {
	return []prometheus.Collector{c.master, c.acquired, c.acquireErrs, c.ended, c.stuck, c.restarts, c.wait, c.hold}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.vecs() {
		v.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, v := range c.vecs() {
		v.Collect(ch)
	}
}

// Hook returns an OnEvent hook that records the events of the supervisor
// called name, then passes each to next (which may be nil). Assign it to
// Supervisor.OnEvent before Run. The series of name appear at once, at 0.
// Two supervisors hooked under one name in one process share its series.
func (c *Collector) Hook(name string, next func(supervise.Event)) func(supervise.Event) {
	c.master.WithLabelValues(name).Set(0)
	for _, v := range []*prometheus.CounterVec{c.acquired, c.acquireErrs, c.stuck, c.restarts} {
		v.WithLabelValues(name)
	}
	for _, cause := range []string{CauseLost, CauseShutdown, CauseChildExited} {
		c.ended.WithLabelValues(name, cause)
	}
	h := &hook{c: c, name: name, next: next, without: time.Now()}
	return h.event
}

// hook is the state of one supervisor's hook.
type hook struct {
	c    *Collector
	name string
	next func(supervise.Event)

	mu       sync.Mutex
	without  time.Time // since when the supervisor has been without the lock
	waiting  bool      // without was set by an EventWaiting
	acquired time.Time // when the current hold began; zero when none
	ended    bool      // the current hold's end was counted
}

func (h *hook) event(e supervise.Event) {
	h.record(e)
	if h.next != nil {
		h.next(e)
	}
}

func (h *hook) record(e supervise.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, name := h.c, h.name
	at := e.Time
	if at.IsZero() {
		at = time.Now()
	}
	switch e.Kind {
	case supervise.EventWaiting:
		if !h.waiting {
			h.waiting, h.without = true, at
		}
	case supervise.EventAcquireFailed:
		c.acquireErrs.WithLabelValues(name).Inc()
	case supervise.EventAcquired:
		c.master.WithLabelValues(name).Set(1)
		c.acquired.WithLabelValues(name).Inc()
		c.wait.WithLabelValues(name).Observe(at.Sub(h.without).Seconds())
		h.acquired, h.ended, h.waiting = at, false, false
	case supervise.EventLost:
		c.master.WithLabelValues(name).Set(0)
		h.end(CauseLost)
	case supervise.EventStopping:
		h.end(CauseShutdown) // unless the loss was counted just before
	case supervise.EventChildExited:
		h.end(CauseChildExited) // unless the child was told to stop
	case supervise.EventStuck:
		c.stuck.WithLabelValues(name).Inc()
	case supervise.EventRestarting:
		c.restarts.WithLabelValues(name).Inc()
	case supervise.EventReleased:
		c.master.WithLabelValues(name).Set(0)
		if !h.acquired.IsZero() {
			c.hold.WithLabelValues(name).Observe(at.Sub(h.acquired).Seconds())
		}
		h.acquired, h.without, h.waiting = time.Time{}, at, false
	}
}

// end counts the end of the current hold once, with the first cause seen.
func (h *hook) end(cause string) {
	if h.ended || h.acquired.IsZero() {
		return
	}
	h.ended = true
	h.c.ended.WithLabelValues(h.name, cause).Inc()
}
