package postgres_test

import (
	"bufio"
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// helperEnv names the environment variable that turns the test binary
// into a holder process: "hold" takes the lock with this package, prints
// "held", then "lost" when Lost closes, releases and exits; "raw" takes a
// bare pg_advisory_lock, prints "held" and blocks.
const helperEnv = "ONLYONE_PG_HELPER"

func helperMain(mode string) int {
	db, err := sql.Open(os.Getenv("HELPER_DRIVER"), os.Getenv("HELPER_URL"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	name := os.Getenv("HELPER_NAME")
	ctx := context.Background()
	switch mode {
	case "raw":
		conn, err := db.Conn(ctx)
		if err == nil {
			_, err = conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", postgres.Key(name))
		}
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("held")
		select {}
	case "token":
		l, ok := helperAcquire(ctx, db, name)
		if !ok {
			return 1
		}
		tok, _ := l.Token()
		fmt.Println("token", tok)
		_ = l.Release(ctx)
		return 0
	case "fence":
		return fenceHelper(ctx, db, name)
	case "wait":
		// Acquire once, with the fast settings, and say what came of it.
		if _, ok := helperAcquire(ctx, db, name, fast...); ok {
			fmt.Println("held")
		}
		return 0
	case "hold":
		l, ok := helperAcquire(ctx, db, name, fast...)
		if !ok {
			return 1
		}
		fmt.Println("held")
		<-l.Lost()
		fmt.Println("lost", l.Err())
		_ = l.Release(ctx)
		return 0
	}
	return 2
}

// helperAcquire takes the lock in a helper process, or says why not.
func helperAcquire(ctx context.Context, db *sql.DB, name string, opts ...postgres.Option) (*postgres.Locker, bool) {
	l, err := postgres.New(db, name, opts...)
	if err == nil {
		err = l.Acquire(ctx)
	}
	if err != nil {
		fmt.Println("error", err)
		return nil, false
	}
	return l, true
}

// helper is a running holder process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.Writer
	lines chan string
}

func startHelper(t *testing.T, e *env, mode, name string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", helperEnv+"="+mode, "HELPER_DRIVER="+e.driver, "HELPER_URL="+e.srv.URL, "HELPER_NAME="+name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: in, lines: make(chan string, 10)}
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if mode == "hold" || mode == "raw" {
		if line := h.next(t, 30*time.Second); line != "held" {
			t.Fatalf("helper: %q, want held", line)
		}
	}
	return h
}

// next returns the helper's next line of output.
func (h *helper) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case line, ok := <-h.lines:
		if !ok {
			t.Fatal("the helper exited")
		}
		return line
	case <-time.After(d):
		t.Fatalf("the helper said nothing for %v", d)
		return ""
	}
}

// takeoverRuns is how many crash takeovers TestCrashTakeover measures per
// driver: ONLYONE_TAKEOVER_RUNS, default 5.
func takeoverRuns() int {
	if n, err := strconv.Atoi(os.Getenv("ONLYONE_TAKEOVER_RUNS")); err == nil && n > 0 {
		return n
	}
	return 5
}

// TestCrashTakeover SIGKILLs a holder process while a waiter waits, and
// measures the takeover: SIGKILL to the waiter's Acquire returning. A raw
// blocking pg_advisory_lock is measured the same way, in the same run, as
// the physical limit.
func TestCrashTakeover(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		// On a server younger than SessionTimeout a grant waits out the
		// restart quarantine: not what this test measures.
		warm := e.locker(t, uniqueName(t))
		if err := warm.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := warm.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		runs := takeoverRuns()
		var ours, raw []time.Duration
		for i := 0; i < runs; i++ {
			ours = append(ours, e.crashOnce(t, "hold"))
			raw = append(raw, e.crashOnce(t, "raw"))
		}
		t.Logf("crash takeover over %d runs: onlyone %s; raw pg_advisory_lock %s", runs, summary(ours), summary(raw))
	})
}

// crashOnce runs one crash trial and returns the takeover latency.
func (e *env) crashOnce(t *testing.T, mode string) time.Duration {
	t.Helper()
	ctx := context.Background()
	name := uniqueName(t)
	h := startHelper(t, e, mode, name)
	res := make(chan time.Time, 1)
	var cleanup func()
	if mode == "raw" {
		conn, err := e.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cleanup = func() { _ = conn.Raw(func(any) error { return driver.ErrBadConn }); conn.Close() }
		go func() {
			if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", postgres.Key(name)); err != nil {
				t.Error(err)
			}
			res <- time.Now()
		}()
	} else {
		w := e.locker(t, name)
		cleanup = func() { _ = w.Release(ctx) }
		go func() { res <- <-acquireAsync(t, w) }()
	}
	eventually(t, 10*time.Second, "the waiter waits", func() bool { return e.waiting(t, postgres.Key(name)) })
	killed := time.Now()
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var took time.Duration
	select {
	case at := <-res:
		took = at.Sub(killed)
	case <-time.After(30 * time.Second):
		t.Fatal("no takeover within 30s of SIGKILL")
	}
	cleanup()
	return took
}

func summary(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1)+0.5)].Round(10 * time.Microsecond) }
	return fmt.Sprintf("min %v p50 %v p99 %v max %v", s[0].Round(10*time.Microsecond), q(0.5), q(0.99), s[len(s)-1].Round(10*time.Microsecond))
}

// TestFreeze SIGSTOPs a holder process past the server bound: the server
// ends its session and a waiter takes over; after SIGCONT the old holder's
// Lost closes at once.
func TestFreeze(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		h := startHelper(t, e, "hold", name)
		w := e.locker(t, name, fast...)
		res := acquireAsync(t, w)
		eventually(t, 10*time.Second, "the waiter waits", func() bool { return e.waiting(t, w.Key()) })
		stopped := time.Now()
		if err := h.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		var acquired time.Time
		select {
		case acquired = <-res:
		case <-time.After(30 * time.Second):
			t.Fatal("the waiter did not take over from a frozen holder within 30s")
		}
		if d := acquired.Sub(stopped); d < w.Grace() {
			t.Fatalf("the waiter took over %v after the freeze, before the holder's grace (%v) could have passed", d, w.Grace())
		}
		resumed := time.Now()
		if err := h.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		line := h.next(t, 10*time.Second)
		noticed := time.Since(resumed)
		if !strings.HasPrefix(line, "lost") {
			t.Fatalf("helper: %q, want lost", line)
		}
		t.Logf("frozen holder replaced %v after SIGSTOP (SessionTimeout 2.2s); after SIGCONT it gave up within %v: %s",
			acquired.Sub(stopped).Round(time.Millisecond), noticed.Round(time.Millisecond), line)
		if noticed > time.Second {
			t.Errorf("the resumed holder took %v to notice, want at once (its loss timer expired while it was frozen)", noticed)
		}
		if err := h.cmd.Wait(); err != nil {
			t.Fatalf("helper: %v", err)
		}
		if err := w.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestStaleGrantNotVouchedFor freezes a waiter in its lock wait, releases
// the lock to the frozen session, lets the server end that silent session
// and gives the lock to another contender; the waiter, resumed, must not
// report the lock held on the grant it reads from its socket. (The chaos
// suite found a resumed waiter starting its work on such a grant.)
func TestStaleGrantNotVouchedFor(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		holder := e.locker(t, name, fast...)
		if err := holder.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		h := startHelper(t, e, "wait", name) // waits with the fast settings
		eventually(t, 10*time.Second, "the helper waits", func() bool { return e.waiting(t, holder.Key()) })
		if err := h.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		if err := holder.Release(ctx); err != nil { // granted to the frozen waiter's session
			t.Fatal(err)
		}
		other := e.locker(t, name, fast...)
		if err := other.Acquire(ctx); err != nil { // once the server ends that silent session
			t.Fatal(err)
		}
		if err := h.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		line := h.next(t, 30*time.Second)
		if line == "held" {
			t.Fatal("the resumed waiter reported the lock held on a grant the server had since revoked")
		}
		if !strings.Contains(line, "stale grant") {
			t.Fatalf("helper: %q, want a refusal of the stale grant", line)
		}
		t.Logf("resumed waiter: %s", line)
		if err := other.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
