package supervise_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

func TestMain(m *testing.M) {
	if os.Getenv("SUPERVISE_STUCK_CHILD") != "" {
		stuckChildProcess() // exits
	}
	if os.Getenv(noLoggerEnv) != "" {
		os.Exit(noLoggerMain()) // a program that runs a supervisor with no Logger
	}
	// Supervisors without a Logger write warnings to slog.Default(); the
	// tests that look at them capture it, the others need not see them.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	goleak.VerifyTestMain(pglocal.Main(m))
}

// events collects a Supervisor's events and lets a test wait for one.
type events struct {
	mu   sync.Mutex
	all  []supervise.Event
	wake chan struct{}
}

func newEvents() *events { return &events{wake: make(chan struct{}, 1)} }

func (ev *events) hook(e supervise.Event) {
	ev.mu.Lock()
	ev.all = append(ev.all, e)
	ev.mu.Unlock()
	select {
	case ev.wake <- struct{}{}:
	default:
	}
}

// waitFor waits for the n-th event (1-based) of kind k.
func (ev *events) waitFor(t *testing.T, k supervise.EventKind, n int) supervise.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		ev.mu.Lock()
		seen := 0
		for _, e := range ev.all {
			if e.Kind == k {
				if seen++; seen == n {
					ev.mu.Unlock()
					return e
				}
			}
		}
		ev.mu.Unlock()
		select {
		case <-ev.wake:
		case <-timeout:
			t.Fatalf("no event %v #%d; saw %v", k, n, ev.kinds())
		}
	}
}

func (ev *events) kinds() []supervise.EventKind {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ks := make([]supervise.EventKind, len(ev.all))
	for i, e := range ev.all {
		ks[i] = e.Kind
	}
	return ks
}

// instant makes every backoff and timeout of s fire at once, and its clock
// stand still, so that restart tests need no waiting.
func instant(t *testing.T, s *supervise.Supervisor) {
	s.SetExit(func(int) { t.Error("the stuck-child policy terminated the process") })
	at := time.Unix(1e9, 0)
	s.SetClock(func() time.Time { return at }, func(time.Duration) <-chan time.Time {
		c := make(chan time.Time, 1)
		c <- at
		return c
	})
}

func TestAtMostOneChildAcrossHandOvers(t *testing.T) {
	reg := memory.New()
	const name, handOvers = "one", 60
	var active, maxActive, starts, revokes atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	child := func(ctx context.Context) error {
		n := active.Add(1)
		if n > maxActive.Load() {
			maxActive.Store(n)
		}
		defer active.Add(-1)
		if s := starts.Add(1); s >= handOvers {
			cancel()
		} else if s%3 == 0 {
			revokes.Add(1)
			reg.Revoke(name) // the lock is taken away: wait to be told
			<-ctx.Done()
			return nil
		}
		return nil // return on its own: release, another may take over
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		s := &supervise.Supervisor{MaxRestarts: 1000, MinBackoff: time.Microsecond, MaxBackoff: 50 * time.Microsecond}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Run(ctx, reg.Locker(name), child)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("supervisor %d: %v", i, err)
		}
	}
	if m := maxActive.Load(); m != 1 {
		t.Fatalf("at most %d children ran at once, want 1", m)
	}
	t.Logf("%d starts, %d of them ended by a revoke", starts.Load(), revokes.Load())
	l := reg.Locker(name)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatalf("the lock is not free after every Run returned: %v", err)
	}
	_ = l.Release(context.Background())
}

func TestLossCancelsChildThenReleases(t *testing.T) {
	reg := memory.New()
	ev := newEvents()
	s := &supervise.Supervisor{OnEvent: ev.hook}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stopped atomic.Bool
	res := make(chan error, 1)
	go func() {
		res <- s.Run(ctx, reg.Locker("job"), func(ctx context.Context) error {
			<-ctx.Done()
			stopped.Store(true)
			return ctx.Err()
		})
	}()
	ev.waitFor(t, supervise.EventAcquired, 1)
	if st := s.Status(); st.State != supervise.Leading {
		t.Fatalf("Status = %+v, want leading", st)
	}
	reg.Revoke("job")
	lost := ev.waitFor(t, supervise.EventLost, 1)
	if !errors.Is(lost.Err, locker.ErrLost) {
		t.Fatalf("lost event Err = %v, want ErrLost", lost.Err)
	}
	ev.waitFor(t, supervise.EventReleased, 1)
	if !stopped.Load() {
		t.Fatal("the lock was released before the child stopped")
	}
	ev.waitFor(t, supervise.EventAcquired, 2) // the name was free again: it leads again
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run = %v, want nil after shutdown", err)
	}
	want := []supervise.EventKind{supervise.EventWaiting, supervise.EventAcquired, supervise.EventLost, supervise.EventStopping,
		supervise.EventChildExited, supervise.EventReleased, supervise.EventWaiting, supervise.EventAcquired, supervise.EventStopping,
		supervise.EventChildExited, supervise.EventReleased}
	if got := ev.kinds(); !equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if st := s.Status(); st.State != supervise.Stopped {
		t.Fatalf("Status after Run = %+v, want stopped", st)
	}
}

func equal(a, b []supervise.EventKind) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestShutdownStopsChildFirst(t *testing.T) {
	reg := memory.New()
	ev := newEvents()
	s := &supervise.Supervisor{OnEvent: ev.hook, ShutdownTimeout: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	var childStopped atomic.Bool
	go func() {
		res <- s.Run(ctx, reg.Locker("job"), func(ctx context.Context) error {
			<-ctx.Done()
			childStopped.Store(true)
			return nil
		})
	}()
	ev.waitFor(t, supervise.EventAcquired, 1)
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if !childStopped.Load() {
		t.Fatal("Run returned before the child stopped")
	}
	got := ev.kinds()
	if !equal(got[len(got)-3:], []supervise.EventKind{supervise.EventStopping, supervise.EventChildExited, supervise.EventReleased}) {
		t.Fatalf("events %v: want stopping, child-exited, released last", got)
	}
	free, cancelFree := context.WithTimeout(context.Background(), time.Second)
	defer cancelFree()
	l := reg.Locker("job")
	if err := l.Acquire(free); err != nil {
		t.Fatalf("the lock is not free after Run returned: %v", err)
	}
	_ = l.Release(free)
}

func TestStuckChildLogOnly(t *testing.T) {
	reg := memory.New()
	ev := newEvents()
	s := &supervise.Supervisor{OnEvent: ev.hook, ShutdownTimeout: 20 * time.Millisecond, Stuck: supervise.LogOnly}
	s.SetExit(func(int) { t.Error("LogOnly terminated the process") })
	unblock := make(chan struct{})
	res := make(chan error, 1)
	go func() {
		res <- s.Run(context.Background(), reg.Locker("job"), func(ctx context.Context) error {
			<-unblock // ignores ctx
			return nil
		})
	}()
	ev.waitFor(t, supervise.EventAcquired, 1)
	reg.Revoke("job")
	ev.waitFor(t, supervise.EventStuck, 1)
	// LogOnly releases although the child runs on: the name is free.
	other := reg.Locker("job")
	if err := other.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		t.Fatalf("Run returned %v while the child still ran", err)
	default:
	}
	close(unblock)
	if err := <-res; !errors.Is(err, supervise.ErrStuck) {
		t.Fatalf("Run = %v, want ErrStuck", err)
	}
	_ = other.Release(context.Background())
}

// stuckChildProcess runs, in a child process, a supervisor with the default
// Terminate policy and a child that ignores its ctx, then loses the lock.
func stuckChildProcess() {
	reg := memory.New()
	s := &supervise.Supervisor{ShutdownTimeout: 20 * time.Millisecond}
	s.OnEvent = func(e supervise.Event) {
		if e.Kind == supervise.EventAcquired {
			go reg.Revoke("job")
		}
	}
	_ = s.Run(context.Background(), reg.Locker("job"), func(context.Context) error { select {} })
	os.Exit(0) // not reached when Terminate works
}

func TestStuckChildTerminatesProcess(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SUPERVISE_STUCK_CHILD=1")
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != supervise.StuckExitCode {
		t.Fatalf("the process ended with %v, want exit status %d", err, supervise.StuckExitCode)
	}
}

func TestRestartPolicies(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		policy  supervise.RestartPolicy
		results []error // what the child returns, call by call; then it panics
		calls   int
		want    error
	}{
		{"permanent restarts until the intensity limit", supervise.Permanent, []error{nil, errBoom, nil, nil}, 3, supervise.ErrTooManyRestarts},
		{"transient restarts on error, stops on nil", supervise.Transient, []error{errBoom, errBoom, nil}, 3, nil},
		{"temporary never restarts", supervise.Temporary, []error{errBoom}, 1, errBoom},
		{"transient restarts after a panic", supervise.Transient, []error{nil}, 2, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := memory.New()
			ev := newEvents()
			s := &supervise.Supervisor{Restart: tc.policy, MaxRestarts: 2, OnEvent: ev.hook}
			instant(t, s)
			calls := 0
			panicFirst := tc.name == "transient restarts after a panic"
			err := s.Run(context.Background(), reg.Locker("job"), func(context.Context) error {
				calls++
				if panicFirst && calls == 1 {
					panic("child bug")
				}
				i := calls - 1
				if panicFirst {
					i = calls - 2
				}
				return tc.results[i]
			})
			if calls != tc.calls {
				t.Errorf("the child ran %d times, want %d", calls, tc.calls)
			}
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Run = %v, want %v", err, tc.want)
			}
			if st := s.Status(); st.Restarts != tc.calls-1 {
				t.Errorf("Status.Restarts = %d, want %d", st.Restarts, tc.calls-1)
			}
			if panicFirst {
				var pe *supervise.PanicError
				if e := ev.waitFor(t, supervise.EventChildExited, 1); !errors.As(e.Err, &pe) || pe.Value != "child bug" {
					t.Fatalf("first exit = %v, want a PanicError", e.Err)
				}
			}
		})
	}
}

func TestRestartIntensityWindowSlides(t *testing.T) {
	reg := memory.New()
	s := &supervise.Supervisor{MaxRestarts: 2, RestartPeriod: time.Minute}
	s.SetExit(func(int) { t.Error("the stuck-child policy terminated the process") })
	now := time.Unix(1e9, 0)
	s.SetClock(func() time.Time { return now }, func(time.Duration) <-chan time.Time {
		c := make(chan time.Time, 1)
		c <- now
		return c
	})
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	// Stop after the tenth exit, from the supervisor's goroutine: a child
	// that cancelled ctx itself could be seen as asked to stop before its
	// return reached the supervisor, and with this clock its
	// ShutdownTimeout passes at once.
	s.OnEvent = func(e supervise.Event) {
		if e.Kind == supervise.EventChildExited && calls == 10 {
			cancel()
		}
	}
	err := s.Run(ctx, reg.Locker("job"), func(context.Context) error {
		calls++
		now = now.Add(31 * time.Second) // two restarts at most in any minute
		return nil
	})
	if err != nil || calls != 10 {
		t.Fatalf("Run = %v after %d calls; want nil after 10: restarts spread over time must not hit the limit", err, calls)
	}
}

// failing is a Locker whose Acquire fails n times, then waits for ctx.
type failing struct {
	n     atomic.Int32
	fails int32
}

var errDown = errors.New("database down")

func (f *failing) Acquire(ctx context.Context) error {
	if f.n.Add(1) <= f.fails {
		return errDown
	}
	<-ctx.Done()
	return ctx.Err()
}
func (f *failing) Lost() <-chan struct{}         { c := make(chan struct{}); close(c); return c }
func (f *failing) Release(context.Context) error { return nil }

func TestAcquireErrorsBackOffAndNeverStartChild(t *testing.T) {
	ev := newEvents()
	s := &supervise.Supervisor{OnEvent: ev.hook, MinBackoff: time.Millisecond, MaxBackoff: 8 * time.Millisecond}
	l := &failing{fails: 6}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	started := false
	go func() { res <- s.Run(ctx, l, func(context.Context) error { started = true; return nil }) }()
	for i := 1; i <= 6; i++ {
		e := ev.waitFor(t, supervise.EventAcquireFailed, i)
		max := time.Millisecond << (i - 1)
		if max > 8*time.Millisecond {
			max = 8 * time.Millisecond
		}
		if !errors.Is(e.Err, errDown) || e.Delay < max/2 || e.Delay > max {
			t.Fatalf("failure %d: Err %v, Delay %v; want errDown and a delay in [%v, %v]", i, e.Err, e.Delay, max/2, max)
		}
	}
	if st := s.Status(); !errors.Is(st.LastError, errDown) || st.State != supervise.Waiting {
		t.Fatalf("Status = %+v, want waiting with the last error", st)
	}
	cancel()
	// Never silent: the caller learns why the child never ran.
	if err := <-res; !errors.Is(err, context.Canceled) || !errors.Is(err, errDown) {
		t.Fatalf("Run = %v, want an error matching context.Canceled and the last failure", err)
	}
	if started {
		t.Fatal("the child started although the lock was never held")
	}
}

// graceful is a memory Locker that reports a grace.
type graceful struct {
	*memory.Locker
	grace time.Duration
}

func (g graceful) Grace() time.Duration { return g.grace }

func TestSettingsValidated(t *testing.T) {
	l := graceful{memory.New().Locker("x"), time.Second}
	child := func(context.Context) error { return nil }
	for _, s := range []*supervise.Supervisor{
		{ShutdownTimeout: 2 * time.Second},
		{ShutdownTimeout: -1},
		{MaxRestarts: -1},
		{MinBackoff: time.Second, MaxBackoff: time.Millisecond},
		{Restart: 7},
	} {
		if err := s.Run(context.Background(), l, child); !errors.Is(err, locker.ErrConfig) {
			t.Errorf("Run with %+v = %v, want ErrConfig", s, err)
		}
	}
	if err := supervise.Run(context.Background(), nil, child); !errors.Is(err, locker.ErrConfig) {
		t.Errorf("Run with a nil locker = %v, want ErrConfig", err)
	}
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	if err := s.Run(context.Background(), l, child); err != nil {
		t.Errorf("Run with the default ShutdownTimeout and a 1s grace = %v, want nil (the default shrinks to the grace)", err)
	}
}

func TestTemporaryNotRestartedAfterLoss(t *testing.T) {
	reg := memory.New()
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	s.OnEvent = func(e supervise.Event) {
		if e.Kind == supervise.EventAcquired {
			reg.Revoke("once")
		}
	}
	calls := 0
	err := s.Run(context.Background(), reg.Locker("once"), func(ctx context.Context) error {
		calls++
		<-ctx.Done()
		return nil
	})
	if !errors.Is(err, locker.ErrLost) || calls != 1 {
		t.Fatalf("Run = %v after %d calls, want ErrLost after 1", err, calls)
	}
}

func TestChildGetsFencingToken(t *testing.T) {
	reg := memory.New()
	var tokens []uint64
	s := &supervise.Supervisor{Restart: supervise.Transient}
	instant(t, s)
	err := s.Run(context.Background(), reg.Locker("fenced"), func(ctx context.Context) error {
		tok, ok := supervise.Token(ctx)
		if !ok {
			return errors.New("no token in the child's ctx")
		}
		tokens = append(tokens, tok)
		if len(tokens) < 3 {
			return errors.New("fail, to be restarted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 3 || !(tokens[0] < tokens[1] && tokens[1] < tokens[2]) {
		t.Fatalf("tokens %v, want three, strictly increasing", tokens)
	}
	if _, ok := supervise.Token(context.Background()); ok {
		t.Fatal("Token of a context without one = true")
	}
}
