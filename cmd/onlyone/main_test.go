package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

func TestMain(m *testing.M) {
	if os.Getenv("ONLYONE_CLI_UNDER_TEST") == "1" {
		os.Exit(cli(context.Background(), os.Args[1:], os.Stdout, os.Stderr)) // this binary is onlyone
	}
	goleak.VerifyTestMain(pglocal.Main(m))
}

// wrapper is one onlyone process.
type wrapper struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{}
	err            error
}

// syncBuffer is a bytes.Buffer that a test may read while a process
// writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs onlyone with args against the shared server.
func start(t *testing.T, url string, env []string, args ...string) *wrapper {
	t.Helper()
	w := &wrapper{cmd: exec.Command(os.Args[0], args...), done: make(chan struct{})}
	// GORACE: a race-enabled binary otherwise sleeps 1s at exit.
	w.cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0", "ONLYONE_CLI_UNDER_TEST=1", "DATABASE_URL="+url), env...)
	w.cmd.Stdout, w.cmd.Stderr = &w.stdout, &w.stderr
	w.cmd.WaitDelay = 10 * time.Second // should a descendant keep the output open
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		w.err = w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		_ = w.cmd.Process.Kill()
		<-w.done
	})
	return w
}

// wait waits for onlyone to exit and returns its exit status.
func (w *wrapper) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("onlyone did not exit; stderr:\n%s", w.stderr.String())
	}
	var ee *exec.ExitError
	if w.err != nil && !errors.As(w.err, &ee) {
		t.Fatal(w.err)
	}
	return w.cmd.ProcessState.ExitCode()
}

func (w *wrapper) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := w.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func uniqueName(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return strings.ReplaceAll(t.Name(), "/", ".") + "." + hex.EncodeToString(b[:])
}

// poll waits for cond, checking often: the things these tests wait for
// (a file written by a child process, a process gone) send no event.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// alive reports whether pid is a live process (not gone, not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(n)) }

func fmtInt(n int) string {
	var b [20]byte
	i := len(b)
	for n >= 10 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	i--
	b[i] = byte('0' + n)
	return string(b[i:])
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, c := range strings.TrimSpace(string(b)) {
		pid = pid*10 + int(c-'0')
	}
	return pid
}

func TestAtMostOneCommandAtATime(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	// mkdir is atomic: a second command running at the same time fails it.
	script := `mkdir "$D/running" || exit 99; echo "$ONLYONE_IDENTITY" >> "$D/runs"; sleep 0.2; rmdir "$D/running"`
	var ws []*wrapper
	for i := 0; i < 3; i++ {
		ws = append(ws, start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--", "sh", "-c", script))
	}
	for i, w := range ws {
		if code := w.wait(t); code != 0 {
			t.Fatalf("wrapper %d exited %d; stderr:\n%s", i, code, w.stderr.String())
		}
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	if n := strings.Count(string(runs), "\n"); n != 3 {
		t.Fatalf("%d runs, want 3 one after the other:\n%s", n, runs)
	}
}

func TestKillingTheWrapperKillsItsCommand(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	a := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--", "sh", "-c", `echo $$ > "$D/a.pid"; exec sleep 60`)
	poll(t, "a's command starts", func() bool { return exists(filepath.Join(dir, "a.pid")) })
	b := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--", "sh", "-c", `touch "$D/b.started"; exec sleep 60`)
	pid := readPID(t, filepath.Join(dir, "a.pid"))
	a.signal(t, syscall.SIGKILL)
	poll(t, "a's command dies with it", func() bool { return !alive(pid) })
	poll(t, "b's command starts", func() bool { return exists(filepath.Join(dir, "b.started")) })
	b.signal(t, syscall.SIGTERM)
	if code := b.wait(t); code != 128+int(syscall.SIGTERM) {
		t.Fatalf("b exited %d, want %d (its command killed by SIGTERM)", code, 128+int(syscall.SIGTERM))
	}
}

func TestSIGTERMStopsTheCommand(t *testing.T) {
	srv := pglocal.Shared(t)
	dir := t.TempDir()
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--", "sh", "-c", `touch "$D/started"; exec sleep 60`)
	poll(t, "the command starts", func() bool { return exists(filepath.Join(dir, "started")) })
	w.signal(t, syscall.SIGTERM)
	if code := w.wait(t); code != 143 {
		t.Fatalf("exit %d, want 143: the command stopped by the forwarded SIGTERM", code)
	}
}

func TestCommandIgnoringSIGTERMIsKilled(t *testing.T) {
	srv := pglocal.Shared(t)
	dir := t.TempDir()
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--shutdown-timeout", "300ms", "--",
		"sh", "-c", `trap "" TERM; touch "$D/started"; while :; do sleep 1; done`)
	poll(t, "the command starts", func() bool { return exists(filepath.Join(dir, "started")) })
	w.signal(t, syscall.SIGTERM)
	if code := w.wait(t); code != 137 {
		t.Fatalf("exit %d, want 137: SIGKILL after the shutdown timeout", code)
	}
}

func TestLossStopsTheCommand(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--", "sh", "-c", `echo $$ > "$D/pid"; exec sleep 60`)
	poll(t, "the command starts", func() bool { return exists(filepath.Join(dir, "pid")) })
	pid := readPID(t, filepath.Join(dir, "pid"))
	db := openAdmin(t, srv.URL)
	h, err := postgres.WhoHolds(context.Background(), db, name)
	if err != nil || h == nil {
		t.Fatalf("WhoHolds = %v, %v", h, err)
	}
	if _, err := db.Exec("SELECT pg_terminate_backend($1)", h.PID); err != nil {
		t.Fatal(err)
	}
	if code := w.wait(t); code != exitLost {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitLost, w.stderr.String())
	}
	if alive(pid) {
		t.Fatal("the command still runs after the lock was lost")
	}
	if !strings.Contains(w.stderr.String(), "lost") {
		t.Errorf("stderr does not say the lock was lost:\n%s", w.stderr.String())
	}
}

func openAdmin(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestExitStatusPassesThrough(t *testing.T) {
	srv := pglocal.Shared(t)
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"sh", "-c", "exit 7"}, 7},
		{[]string{"true"}, 0},
		{[]string{"/nonexistent/command"}, 127},
	} {
		w := start(t, srv.URL, nil, append([]string{"run", "--name", uniqueName(t), "--"}, tc.args...)...)
		if code := w.wait(t); code != tc.want {
			t.Errorf("%v: exit %d, want %d; stderr:\n%s", tc.args, code, tc.want, w.stderr.String())
		}
	}
}

func TestCommandSeesTheLock(t *testing.T) {
	srv := pglocal.Shared(t)
	name := uniqueName(t)
	var last uint64
	for i := 0; i < 2; i++ {
		w := start(t, srv.URL, nil, "run", "--name", name, "--identity", "node-a", "--", "sh", "-c", `echo "$ONLYONE_NAME $ONLYONE_IDENTITY $ONLYONE_LOCK_KEY $ONLYONE_FENCING_TOKEN"`)
		if code := w.wait(t); code != 0 {
			t.Fatal(w.stderr.String())
		}
		f := strings.Fields(w.stdout.String())
		want := []string{name, "node-a", fmtInt64(postgres.Key(name))}
		if len(f) != 4 || f[0] != want[0] || f[1] != want[1] || f[2] != want[2] {
			t.Fatalf("the command saw %q, want %q and a token", w.stdout.String(), want)
		}
		tok, err := strconv.ParseUint(f[3], 10, 64)
		if err != nil || tok <= last {
			t.Fatalf("ONLYONE_FENCING_TOKEN = %q, want a number above the previous run's %d", f[3], last)
		}
		last = tok
	}
}

func fmtInt64(n int64) string {
	if n < 0 {
		return "-" + fmtUint(uint64(-n))
	}
	return fmtUint(uint64(n))
}

func fmtUint(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}

func TestStatus(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	st := start(t, srv.URL, nil, "status", "--name", name)
	if code := st.wait(t); code != exitFree || !strings.Contains(st.stdout.String(), name+": free, 0 waiting") {
		t.Fatalf("status of a free lock: exit %d, %q %q", code, st.stdout.String(), st.stderr.String())
	}
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--identity", "node-b", "--", "sh", "-c", `touch "$D/started"; exec sleep 60`)
	poll(t, "the command starts", func() bool { return exists(filepath.Join(dir, "started")) })
	st = start(t, srv.URL, nil, "status", "--name", name)
	if code := st.wait(t); code != 0 || !strings.Contains(st.stdout.String(), "held by node-b (role ") {
		t.Fatalf("status of a held lock: exit %d, %q %q", code, st.stdout.String(), st.stderr.String())
	}
	w.signal(t, syscall.SIGTERM)
	w.wait(t)
}

func TestTransientRestartsUntilSuccess(t *testing.T) {
	srv := pglocal.Shared(t)
	dir := t.TempDir()
	script := `echo x >> "$D/runs"; [ $(wc -l < "$D/runs") -ge 3 ]`
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--restart", "transient", "--", "sh", "-c", script)
	if code := w.wait(t); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, w.stderr.String())
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	if n := strings.Count(string(runs), "\n"); n != 3 {
		t.Fatalf("%d runs, want 3 (two failures, then success)", n)
	}
}

func TestBadUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		url  string
		want int
		says string
	}{
		{[]string{"run", "--", "true"}, "postgres://x@127.0.0.1:1/x", exitUsage, "--name is required"},
		{[]string{"run", "--name", "x"}, "postgres://x@127.0.0.1:1/x", exitUsage, "no command"},
		{[]string{"run", "--name", "x", "--restart", "sometimes", "--", "true"}, "postgres://x@127.0.0.1:1/x", exitUsage, "--restart"},
		{[]string{"run", "--name", "x", "--shutdown-timeout", "-1s", "--", "true"}, "postgres://x@127.0.0.1:1/x", exitUsage, "--shutdown-timeout"},
		{[]string{"run", "--name", "x", "--", "true"}, "", exitUsage, "DATABASE_URL"},
		{[]string{"status"}, "postgres://x@127.0.0.1:1/x", exitUsage, "--name is required"},
		{[]string{"frobnicate"}, "", exitUsage, "unknown command"},
		{[]string{"run", "--name", "x", "--", "true"}, "postgres://x:Sup3rS3cret@127.0.0.1:1/x?connect_timeout=2", exitError, "cannot reach the database"},
		{[]string{"status", "--name", "x"}, "postgres://x:Sup3rS3cret@127.0.0.1:1/x?connect_timeout=2", exitError, "cannot reach the database"},
		{[]string{"run", "--name", "x", "--", "true"}, "postgres://x:Sup3rS3cret@[bad/x", exitError, "bad database URL"},
		{[]string{"run", "--name", "x", "--", "true"}, "host=127.0.0.1 port=1 user=x password=Sup3rS3cret connect_timeout=2", exitError, "cannot reach the database"},
	} {
		var out, errb bytes.Buffer
		t.Setenv("DATABASE_URL", tc.url)
		code := cli(context.Background(), tc.args, &out, &errb)
		if code != tc.want || !strings.Contains(errb.String(), tc.says) {
			t.Errorf("onlyone %v: exit %d, stderr %q; want exit %d saying %q", tc.args, code, errb.String(), tc.want, tc.says)
		}
		if strings.Contains(errb.String(), "Sup3rS3cret") || strings.Contains(out.String(), "Sup3rS3cret") {
			t.Errorf("onlyone %v printed the password: %q", tc.args, errb.String())
		}
	}
	var out bytes.Buffer
	if code := cli(context.Background(), []string{"run", "--help"}, &out, &out); code != 0 || !strings.Contains(out.String(), "--shutdown-timeout duration") {
		t.Errorf("run --help: exit %d, %q", code, out.String())
	}
}

func TestWrongPasswordNotEchoed(t *testing.T) {
	srv := pglocal.Shared(t)
	db := openAdmin(t, srv.URL)
	role := "onlyone_cli_" + strings.ToLower(uniqueName(t)[len(uniqueName(t))-8:])
	if _, err := db.Exec("CREATE ROLE " + role + " LOGIN PASSWORD 'right-one' IN ROLE onlyone_password"); err != nil {
		t.Fatal(err)
	}
	defer db.Exec("DROP ROLE " + role)
	var out, errb bytes.Buffer
	t.Setenv("DATABASE_URL", srv.URLWith(role, "Wr0ngPassw0rd", ""))
	code := cli(context.Background(), []string{"run", "--name", "x", "--", "true"}, &out, &errb)
	if code == 0 && srv.Kind != "local" {
		t.Skip("this server trusts every connection")
	}
	if code != exitError || strings.Contains(errb.String(), "Wr0ngPassw0rd") || !strings.Contains(errb.String(), "password authentication failed") {
		t.Fatalf("exit %d, stderr %q: want %d, a clear message, and no password", code, errb.String(), exitError)
	}
}
