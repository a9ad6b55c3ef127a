package chaos

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// run is one stretch of a node's work, from its record.
type run struct {
	node       string
	start, end time.Time // end: the "stop", else the last beat
	token      uint64
	stopped    bool   // ended with a "stop" record
	lost       string // why the lock was lost, if it was
}

// Report is what the checker found.
type Report struct {
	Seed                  uint64
	Faults                map[string]int             // injected, per kind
	LeaderFaults          map[string]int             // of which hit the holder
	Takeovers             int                        // runs started
	Latency               map[string][]time.Duration // fault on the holder → next run started elsewhere, per kind
	Overlaps              []string                   // unexplained: the invariant is broken
	Windows               map[string]int             // overlaps explained by a documented window, per cause
	WorstWindow           map[string]time.Duration   // the longest of them, per cause
	LateStarts            int                        // terminate windows where the terminated node started second
	WorstLateStart        time.Duration              // (its grant was read after the terminate)
	LongGaps              []string                   // leaderless intervals beyond the bound
	LongestGap            time.Duration
	LongestLive           time.Duration // of which the primary took queries (liveness: ≤ leadAgain)
	TokenInversions       int           // runs whose token is not above the previous run's
	UnexplainedInversions int           // of which overlapped outside a documented window
	Leaked                int           // sessions holding the lock after all nodes stopped
	Stuck                 []string      // nodes that did not exit within stopTimeout of a signal, with their goroutines
	Records               int           // record lines read
	BadLines              int           // record lines that did not parse
}

// gapBound is the longest leaderless interval the settings allow after a
// fault on a node: a frozen or partitioned holder keeps the lock for
// SessionTimeout, and a moment more to reconnect. Longer gaps are listed
// with the faults around them (several faults at once add up).
const gapBound = 2200*time.Millisecond + 2*time.Second

// leadAgain is the liveness bound: a leaderless interval longer than this,
// whatever the faults, is a failure — not counting the time a server fault
// kept the primary from taking queries (a server that is down for a minute
// is an outage of the server, not of the locker).
const leadAgain = 40 * time.Second

func check(c *controller, leaked int) (*Report, error) {
	r := &Report{Faults: map[string]int{}, LeaderFaults: map[string]int{}, Latency: map[string][]time.Duration{},
		Windows: map[string]int{}, WorstWindow: map[string]time.Duration{}, Leaked: leaked}
	var runs []run
	for _, n := range c.nodes {
		rs, lines, bad, err := readRecord(filepath.Join(c.dir, n.id+".rec"), n.id)
		if err != nil {
			return nil, err
		}
		runs = append(runs, rs...)
		r.Records += lines
		r.BadLines += bad
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].start.Before(runs[j].start) })
	r.Takeovers = len(runs)
	faults := append([]fault(nil), c.faults...)
	sortFaults(faults)
	for _, f := range faults {
		r.Faults[f.Kind]++
		if f.Leader {
			r.LeaderFaults[f.Kind]++
		}
	}

	// Overlaps, each either explained by a documented window or not.
	for i := range runs {
		for j := i + 1; j < len(runs); j++ {
			a, b := runs[i], runs[j] // a started first
			if !b.start.Before(a.end) {
				continue
			}
			if a.node == b.node {
				r.Overlaps = append(r.Overlaps, fmt.Sprintf("%s ran twice at once: %v", a.node, a.start))
				continue
			}
			d := minTime(a.end, b.end).Sub(b.start)
			cause, late := explain(a, b, faults)
			if cause == "" {
				r.Overlaps = append(r.Overlaps, fmt.Sprintf("%s (run from %s to %s, lost: %q) still ran %v after %s started at %s\n%s",
					a.node, stamp(a.start), stamp(a.end), a.lost, d, b.node, stamp(b.start), around(faults, a.start.Add(-5*time.Second), a.end)))
				continue
			}
			r.Windows[cause]++
			r.WorstWindow[cause] = max(r.WorstWindow[cause], d)
			if late {
				r.LateStarts++
				r.WorstLateStart = max(r.WorstLateStart, d)
			}
		}
	}

	// Leaderless intervals.
	var covered time.Time
	for _, x := range runs {
		if !covered.IsZero() && x.start.After(covered) {
			gap := x.start.Sub(covered)
			if gap > r.LongestGap {
				r.LongestGap = gap
			}
			// Without a server there is no leader to be had: liveness
			// counts the time the primary took queries.
			r.LongestLive = max(r.LongestLive, gap-serverDown(faults, covered, x.start))
			if gap > gapBound {
				r.LongGaps = append(r.LongGaps, fmt.Sprintf("%v without a leader from %s\n%s",
					gap.Round(time.Millisecond), stamp(covered), around(faults, covered.Add(-5*time.Second), x.start)))
			}
		}
		if x.end.After(covered) {
			covered = x.end
		}
	}

	// Fencing tokens grow with every run, except where a run started on a
	// grant read late, inside a documented window — the case the fence is
	// for. An inversion whose runs overlap outside a window is a failure.
	// A run whose hold ended before its token was durable has none (0)
	// and wrote nothing fenced: it is left out.
	var p *run
	for i := range runs {
		x := &runs[i]
		if x.token == 0 {
			continue
		}
		if p != nil && x.token <= p.token {
			r.TokenInversions++
			if cause, _ := explain(*p, *x, faults); x.start.Before(p.end) && cause == "" {
				r.UnexplainedInversions++
			}
		}
		p = x
	}

	// Takeover latency: from a fault on the holder to the next run started
	// on another node.
	for _, f := range faults {
		if !f.Leader || f.Node == "" {
			continue
		}
		for _, x := range runs {
			if x.node != f.Node && x.start.After(f.At) {
				r.Latency[f.Kind] = append(r.Latency[f.Kind], x.start.Sub(f.At))
				break
			}
		}
	}
	for _, f := range faults {
		if f.Node == "" { // a server fault: every lock was freed
			for _, x := range runs {
				if x.start.After(f.Till) {
					r.Latency[f.Kind] = append(r.Latency[f.Kind], x.start.Sub(f.At))
					break
				}
			}
		}
	}
	return r, nil
}

// The two documented windows, as the locker/postgres package doc names them.
const (
	WindowFreeze    = "freeze"    // a process paused longer than the server waits for it
	WindowTerminate = "terminate" // an operator's pg_terminate_backend: the session freed at once
)

// explain names the documented window that lets a's work overlap b's (a
// started first), or returns "". Each window has a precise shape:
//
//   - freeze: one of them was frozen and the other started during the
//     freeze — no sooner than LossTimeout + Grace - a heartbeat into it
//     (the server frees a silent session only after SessionTimeout, and a
//     restarted one grants only after its quarantine) unless the frozen
//     node's session was terminated — and the frozen one's work stopped
//     soon after it resumed. The frozen one may have started first, or
//     started second, on resume, on a grant it read before the freeze;
//   - terminate: an operator freed the lock of one of them at once — of the
//     one that ran first, or of one whose grant was made before and read
//     after — the other started after that, and the first one's work
//     stopped soon after, not counting the time its process was frozen.
//
// "Soon" is a heartbeat, the loss timeout and a margin for scheduling.
// Nothing else explains an overlap: a server restart, crash-reset or
// failover frees every lock, and the locker must not grant again before
// every holder from before has stopped. late reports a terminate window
// whose terminated node started second.
func explain(a, b run, faults []fault) (cause string, late bool) {
	notice := heartbeat + lossTimeout + 300*time.Millisecond
	// The soonest the server may let another node in after a holder froze:
	// it frees a silent session after SessionTimeout, and after a server
	// fault grants only once it has been up for LossTimeout + Grace (the
	// holder may have frozen up to a heartbeat after the fault, before it
	// could notice).
	freedAfter := lossTimeout + grace - heartbeat
	terminated := func(node string, from, to time.Time) bool {
		for _, f := range faults {
			if f.Kind == Terminate && f.Node == node && !f.At.Before(from) && f.At.Before(to) {
				return true
			}
		}
		return false
	}
	frozenFor := func(node string, from, to time.Time) (d time.Duration) {
		for _, f := range faults {
			if f.Kind == Freeze && f.Node == node && f.Till.After(from) && f.At.Before(to) {
				d += minTime(f.Till, to).Sub(maxTime(f.At, from))
			}
		}
		return d
	}
	pairs := [][2]run{{a, b}, {b, a}}
	for _, f := range faults {
		switch f.Kind {
		case Freeze:
			for i, p := range pairs {
				frozen, other := p[0], p[1]
				if f.Node != frozen.node || other.start.Before(f.At) || !other.start.Before(f.Till) ||
					!frozen.end.Before(f.Till.Add(notice)) || i == 1 && frozen.start.Before(f.Till) {
					continue
				}
				if !other.start.Before(f.At.Add(freedAfter)) || terminated(frozen.node, f.At.Add(-notice), other.start) {
					return WindowFreeze, false
				}
			}
		case Terminate:
			for i, p := range pairs {
				freed, other := p[0], p[1]
				if f.Node == freed.node && !other.start.Before(f.At) &&
					freed.end.Before(f.Till.Add(notice+frozenFor(freed.node, f.At, freed.end))) {
					return WindowTerminate, i == 1
				}
			}
		}
	}
	return "", false
}

// serverDown is how long, between from and to, a server fault kept the
// primary from taking queries.
func serverDown(faults []fault, from, to time.Time) (d time.Duration) {
	for _, f := range faults {
		if f.Node == "" && f.Till.After(from) && f.At.Before(to) {
			d += minTime(f.Till, to).Sub(maxTime(f.At, from))
		}
	}
	return d
}

func stamp(t time.Time) string { return t.Format("15:04:05.000") }

// around lists the faults that were under way between from and to.
func around(faults []fault, from, to time.Time) string {
	var b strings.Builder
	for _, f := range faults {
		if f.Till.Before(from) || f.At.After(to) {
			continue
		}
		node := f.Node
		if node == "" {
			node = "server"
		}
		fmt.Fprintf(&b, "      %s %-9s %-7s until %s (holder: %v)\n", stamp(f.At), f.Kind, node, stamp(f.Till), f.Leader)
	}
	return strings.TrimRight(b.String(), "\n")
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// readRecord parses a node's record file into runs.
func readRecord(path, node string) (runs []run, lines, bad int, err error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, 0, 0, nil
	}
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	var cur *run
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines++
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			bad++
			continue
		}
		ns, perr := strconv.ParseInt(fields[1], 10, 64)
		if perr != nil {
			bad++
			continue
		}
		at := time.Unix(0, ns)
		switch fields[0] {
		case "start":
			if cur != nil {
				runs = append(runs, *cur) // its process was killed
			}
			var tok uint64
			if len(fields) > 2 {
				tok, _ = strconv.ParseUint(fields[2], 10, 64)
			}
			cur = &run{node: node, start: at, end: at, token: tok}
		case "token": // the run's fencing token, once durable
			if cur != nil && len(fields) > 2 {
				cur.token, _ = strconv.ParseUint(fields[2], 10, 64)
			}
		case "beat":
			if cur != nil && at.After(cur.end) {
				cur.end = at
			}
		case "lost":
			if cur != nil {
				cur.lost = strings.Join(fields[2:], " ")
			}
		case "stop":
			if cur != nil {
				cur.end, cur.stopped = at, true
				runs = append(runs, *cur)
				cur = nil
			}
		default:
			bad++
		}
	}
	if cur != nil {
		runs = append(runs, *cur)
	}
	return runs, lines, bad, sc.Err()
}

// String prints the report.
func (r *Report) String() string {
	var b strings.Builder
	total, onLeader := 0, 0
	kinds := append([]string{Kill, Term, Freeze, Partition, Terminate}, serverKinds...)
	for _, k := range kinds {
		total += r.Faults[k]
		onLeader += r.LeaderFaults[k]
	}
	fmt.Fprintf(&b, "faults injected: %d (%d on the holder)\n", total, onLeader)
	for _, k := range kinds {
		ls := r.Latency[k]
		fmt.Fprintf(&b, "  %-17s %4d (%3d on the holder)  takeover %s\n", k, r.Faults[k], r.LeaderFaults[k], quantiles(ls))
	}
	fmt.Fprintf(&b, "runs of the work (takeovers): %d; record lines: %d, unreadable: %d\n", r.Takeovers, r.Records, r.BadLines)
	fmt.Fprintf(&b, "overlaps in documented windows: freeze %d (worst %v), terminate %d (worst %v; the terminated node started second: %d, worst %v)\n",
		r.Windows[WindowFreeze], r.WorstWindow[WindowFreeze].Round(time.Millisecond),
		r.Windows[WindowTerminate], r.WorstWindow[WindowTerminate].Round(time.Millisecond),
		r.LateStarts, r.WorstLateStart.Round(time.Millisecond))
	fmt.Fprintf(&b, "overlaps outside them: %d\n", len(r.Overlaps))
	for _, o := range r.Overlaps {
		fmt.Fprintf(&b, "  %s\n", o)
	}
	fmt.Fprintf(&b, "longest leaderless interval: %v, of which the primary took queries: %v (must be ≤ %v); beyond %v: %d\n",
		r.LongestGap.Round(time.Millisecond), r.LongestLive.Round(time.Millisecond), leadAgain, gapBound, len(r.LongGaps))
	for _, g := range r.LongGaps {
		fmt.Fprintf(&b, "  %s\n", g)
	}
	fmt.Fprintf(&b, "fencing token inversions: %d, outside the documented windows: %d\n", r.TokenInversions, r.UnexplainedInversions)
	fmt.Fprintf(&b, "locks leaked after every node stopped: %d\n", r.Leaked)
	fmt.Fprintf(&b, "nodes that did not exit within %v of a signal, server faults that took over 10s: %d\n", stopTimeout, len(r.Stuck))
	for _, s := range r.Stuck {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	return b.String()
}

// OK reports whether the run found nothing the invariant rules out.
func (r *Report) OK() bool {
	return len(r.Overlaps) == 0 && r.Leaked == 0 && r.BadLines == 0 && r.UnexplainedInversions == 0 &&
		r.LongestLive <= leadAgain
}

func quantiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))].Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %v p90 %v max %v (n=%d)", q(0.5), q(0.9), s[len(s)-1].Round(100*time.Microsecond), len(s))
}
