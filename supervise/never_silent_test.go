package supervise_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// noLoggerEnv names, in a child process of the test binary, the context's
// timeout, the driver and the URL of a database to run a supervisor
// against with no Logger.
const noLoggerEnv = "SUPERVISE_NO_LOGGER"

// noLoggerMain runs supervise.Run with a context that times out, as the
// README's example does, with the default slog logger writing to stderr;
// it prints what Run returned on stdout.
func noLoggerMain() int {
	args := strings.SplitN(os.Getenv(noLoggerEnv), " ", 3)
	timeout, err := time.ParseDuration(args[0])
	if err != nil || len(args) != 3 {
		fmt.Println("bad", noLoggerEnv, err)
		return 2
	}
	driver, url := args[1], args[2]
	db, err := sql.Open(driver, url)
	if err != nil {
		fmt.Println("open:", err)
		return 2
	}
	defer db.Close()
	l, err := postgres.New(db, "never-silent")
	if err != nil {
		fmt.Println("new:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err = supervise.Run(ctx, l, func(context.Context) error { return nil })
	fmt.Printf("config=%v deadline=%v\n%v\n", errors.Is(err, locker.ErrConfig), errors.Is(err, context.DeadlineExceeded), err)
	return 0
}

// A database that does not exist is a mistake that retrying cannot cure:
// Run returns at once with an error naming it, and a program that set no
// Logger shows the cause on stderr, once.
func TestWrongDatabaseEndsRunLoudly(t *testing.T) {
	srv := pglocal.Shared(t)
	for _, driver := range []string{"pgx", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			dbname := "no_such_db_" + driver
			out := runNoLogger(t, "5s", driver, srv.URLWith("", "", dbname), dbname)
			if !strings.HasPrefix(out, "config=true deadline=false\n") {
				t.Fatalf("Run returned %q; want an error matching locker.ErrConfig, before the deadline", out)
			}
		})
	}
}

// lib/pq asks for TLS unless told otherwise; against a server without
// TLS that fails at every attempt. It is retried (a server can be given
// a certificate), but not silently: the cause is on stderr once, and Run
// returns it when its context ends.
func TestTLSRefusedIsNamed(t *testing.T) {
	srv := pglocal.Shared(t)
	if srv.Kind != "local" {
		t.Skipf("needs the local server, which has no TLS (server kind %q)", srv.Kind)
	}
	url := strings.Replace(srv.URL, "sslmode=disable", "sslmode=require", 1)
	out := runNoLogger(t, "1s", "postgres", url, "SSL")
	if !strings.HasPrefix(out, "config=false deadline=true\n") {
		t.Fatalf("Run returned %q; want an error matching context.DeadlineExceeded that names the TLS failure", out)
	}
}

// runNoLogger runs noLoggerMain in a child process and returns what it
// printed. It wants the output to contain cause, and exactly one line of
// stderr to contain it.
func runNoLogger(t *testing.T, timeout, driver, url, cause string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), noLoggerEnv+"="+timeout+" "+driver+" "+url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, cause) {
		t.Fatalf("Run returned %q, which does not name %q", out, cause)
	}
	lines := 0
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(line, cause) {
			lines++
		}
	}
	if lines != 1 {
		t.Fatalf("%d lines of stderr name %q, want one:\n%s", lines, cause, stderr.String())
	}
	t.Logf("Run: %s", out)
	t.Logf("stderr: %s", stderr.String())
	return out
}

// scripted is a Locker whose Acquire fails with the errors it is given,
// then waits for ctx.
type scripted struct {
	mu    sync.Mutex
	errs  []error
	calls int
}

func (f *scripted) Acquire(ctx context.Context) error {
	f.mu.Lock()
	f.calls++
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return err
	}
	f.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}
func (f *scripted) Lost() <-chan struct{}         { c := make(chan struct{}); close(c); return c }
func (f *scripted) Release(context.Context) error { return nil }

// records is a slog.Handler that keeps every record.
type records struct {
	mu  sync.Mutex
	all []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }
func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.all = append(h.all, r)
	return nil
}
func (h *records) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *records) WithGroup(string) slog.Handler      { return h }

// at returns the messages and errors of the records at level.
func (h *records) at(level slog.Level) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.all {
		if r.Level != level {
			continue
		}
		line := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				line += ": " + a.Value.String()
			}
			return true
		})
		out = append(out, line)
	}
	return out
}

// A failure is logged at Warn the first time, at each change, and again
// after RepeatedFailureLog; not at every retry.
func TestAcquireFailuresLoggedRarely(t *testing.T) {
	down, refused := errors.New("database down"), errors.New("password refused")
	var errs []error
	for range 5 {
		errs = append(errs, down)
	}
	for range 3 {
		errs = append(errs, refused)
	}
	l := &scripted{errs: errs}
	h := &records{}
	s := &supervise.Supervisor{Logger: slog.New(h)}
	var now atomic.Int64 // nanoseconds since the test's epoch
	epoch := time.Unix(1e9, 0)
	s.SetClock(func() time.Time { return epoch.Add(time.Duration(now.Load())) }, func(time.Duration) <-chan time.Time {
		c := make(chan time.Time, 1)
		c <- epoch
		return c
	})
	ctx, cancel := context.WithCancel(context.Background())
	s.OnEvent = func(e supervise.Event) {
		if e.Kind != supervise.EventAcquireFailed {
			return
		}
		l.mu.Lock()
		calls := l.calls
		l.mu.Unlock()
		switch calls {
		case 7: // the second "password refused", much later
			now.Add(int64(supervise.RepeatedFailureLog))
		case 8:
			cancel()
		}
	}
	err := s.Run(ctx, l, func(context.Context) error { return errors.New("never runs") })
	if !errors.Is(err, context.Canceled) || !errors.Is(err, refused) || !strings.Contains(err.Error(), "8 acquisitions failed") {
		t.Fatalf("Run = %v; want context.Canceled wrapping the last failure", err)
	}
	warns := h.at(slog.LevelWarn)
	want := []string{
		"supervise: acquire-failed: database down",
		"supervise: acquire-failed: password refused",
		"supervise: acquire-failed: password refused",
	}
	if strings.Join(warns, "\n") != strings.Join(want, "\n") {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(warns, "\n"), strings.Join(want, "\n"))
	}
	if debug := h.at(slog.LevelDebug); len(debug) != 8-3 {
		t.Fatalf("%d debug records, want the 5 retries not warned of: %q", len(debug), debug)
	}
}

// With no Logger, the warnings reach slog.Default().
func TestNoLoggerWarnsDefault(t *testing.T) {
	h := &records{}
	old := slog.Default()
	slog.SetDefault(slog.New(h))
	defer slog.SetDefault(old)
	l := &scripted{errs: []error{errDown, errDown}}
	s := &supervise.Supervisor{}
	instant(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	s.OnEvent = func(e supervise.Event) {
		if e.Kind == supervise.EventAcquireFailed && e.Delay != 0 {
			l.mu.Lock()
			if l.calls == 2 {
				cancel()
			}
			l.mu.Unlock()
		}
	}
	err := s.Run(ctx, l, func(context.Context) error { return nil })
	if !errors.Is(err, errDown) {
		t.Fatalf("Run = %v", err)
	}
	if w := h.at(slog.LevelWarn); len(w) != 1 || !strings.Contains(w[0], "database down") {
		t.Fatalf("slog.Default got warnings %q, want the first failure once", w)
	}
	if d := h.at(slog.LevelInfo); len(d) != 0 {
		t.Fatalf("slog.Default got info records %q, want none: only failures are logged uninvited", d)
	}
}

// An error matching locker.ErrConfig from Acquire ends Run at once: retrying
// a bad name or a missing database cannot help.
func TestConfigErrorFromAcquireEndsRun(t *testing.T) {
	reg := memory.New()
	ev := newEvents()
	s := &supervise.Supervisor{OnEvent: ev.hook}
	err := s.Run(context.Background(), reg.Locker("billing\n"), func(context.Context) error {
		t.Error("the child ran")
		return nil
	})
	if !errors.Is(err, locker.ErrConfig) || !strings.Contains(err.Error(), `"billing\n"`) {
		t.Fatalf("Run = %v, want ErrConfig naming the lock", err)
	}
	if e := ev.waitFor(t, supervise.EventAcquireFailed, 1); !errors.Is(e.Err, locker.ErrConfig) {
		t.Fatalf("event %+v", e)
	}
	if n := len(ev.kinds()); n != 2 {
		t.Fatalf("events %v, want waiting and one acquire-failed", ev.kinds())
	}
}

// A Temporary child that never got the lock is not a success.
func TestTemporaryNeverRan(t *testing.T) {
	reg := memory.New()
	holder := reg.Locker("report", memory.WithIdentity("node-a"))
	if err := holder.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer holder.Release(context.Background())
	ev := newEvents()
	s := &supervise.Supervisor{Restart: supervise.Temporary, OnEvent: ev.hook}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	res := make(chan error, 1)
	go func() {
		res <- s.Run(ctx, reg.Locker("report"), func(context.Context) error { return nil })
	}()
	if e := ev.waitFor(t, supervise.EventWaiting, 1); e.Holder != "node-a" {
		t.Fatalf("EventWaiting.Holder = %q, want node-a", e.Holder)
	}
	if st := s.Status(); st.State != supervise.Waiting || st.Holder != "node-a" {
		t.Fatalf("Status = %+v, want waiting for node-a", st)
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want an error matching context.Canceled", err)
	}

	// The same with a deadline, as a cron-style job has.
	s = &supervise.Supervisor{Restart: supervise.Temporary}
	dctx, dcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer dcancel()
	if err := s.Run(dctx, reg.Locker("report"), func(context.Context) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Temporary Run past its deadline = %v, want an error matching context.DeadlineExceeded", err)
	}

	// Permanent and Transient supervisors that were shut down while they
	// waited, with no failure, return nil: that is a normal shutdown.
	s = &supervise.Supervisor{OnEvent: ev.hook}
	ctx, cancel = context.WithCancel(context.Background())
	go func() { res <- s.Run(ctx, reg.Locker("report"), func(context.Context) error { return nil }) }()
	ev.waitFor(t, supervise.EventWaiting, 2)
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Permanent Run shut down while waiting = %v, want nil", err)
	}
}

// Two replicas that start together both find the lock free; the one that
// loses the race still learns, a moment later, who won.
func TestWaiterLearnsHolderAfterRace(t *testing.T) {
	reg := memory.New()
	winner := reg.Locker("relay", memory.WithIdentity("node-a"))
	defer winner.Release(context.Background())
	s := &supervise.Supervisor{}
	instant(t, s)
	var once sync.Once
	s.OnEvent = func(e supervise.Event) {
		if e.Kind == supervise.EventWaiting {
			if e.Holder != "" {
				t.Errorf("EventWaiting.Holder = %q, want \"\": the lock was free", e.Holder)
			}
			once.Do(func() {
				if err := winner.Acquire(context.Background()); err != nil { // wins the race
					t.Error(err)
				}
			})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- s.Run(ctx, reg.Locker("relay"), func(context.Context) error { return nil }) }()
	deadline := time.Now().Add(10 * time.Second)
	for s.Status().Holder != "node-a" {
		if time.Now().After(deadline) {
			t.Fatalf("Status = %+v, want waiting for node-a", s.Status())
		}
		time.Sleep(time.Millisecond) // the recheck sends no event: it only updates Status
	}
	if st := s.Status(); st.State != supervise.Waiting {
		t.Fatalf("Status = %+v", st)
	}
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// handOver is a memory Locker whose losses are hand-overs on purpose, as a
// postgres Session's shed names are.
type handOver struct{ *memory.Locker }

func (l handOver) Err() error {
	if err := l.Locker.Err(); errors.Is(err, locker.ErrLost) {
		return fmt.Errorf("%w (%w)", err, locker.ErrHandedOver)
	}
	return l.Locker.Err()
}

// A lock handed over on purpose, and a child that returns its ctx's
// cancellation, are routine: logged at Info, not as errors or warnings. A
// lock lost any other way is an error.
func TestRoutineEndsAreNotErrors(t *testing.T) {
	for _, handedOver := range []bool{true, false} {
		reg := memory.New()
		var l locker.Locker = reg.Locker("job")
		if handedOver {
			l = handOver{reg.Locker("job")}
		}
		h := &records{}
		s := &supervise.Supervisor{Logger: slog.New(h)}
		ctx, cancel := context.WithCancel(context.Background())
		s.OnEvent = func(e supervise.Event) {
			if e.Kind == supervise.EventChildExited {
				cancel()
			}
		}
		err := s.Run(ctx, l, func(ctx context.Context) error {
			reg.Revoke("job")
			<-ctx.Done()
			return ctx.Err()
		})
		cancel()
		if err != nil {
			t.Fatalf("Run = %v, want nil: the child ran and stopped when told", err)
		}
		if w := h.at(slog.LevelWarn); len(w) != 0 {
			t.Errorf("handed over %v: warnings %q, want none", handedOver, w)
		}
		errs, infos := h.at(slog.LevelError), strings.Join(h.at(slog.LevelInfo), "\n")
		switch {
		case handedOver && (len(errs) != 0 || !strings.Contains(infos, "supervise: lost")):
			t.Errorf("handed over: errors %q, infos %q; want the loss at Info only", errs, infos)
		case !handedOver && (len(errs) != 1 || !strings.Contains(errs[0], "supervise: lost")):
			t.Errorf("revoked: errors %q, want the loss", errs)
		}
	}
}
