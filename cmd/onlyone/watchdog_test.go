package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

// The command, its child and a double-forked setsid daemon all die with a
// SIGKILLed wrapper, within 2 s, and before the command of a node that
// was waiting for the lock starts: the watchdog holds copies of the
// wrapper's database sockets until the whole tree is dead, so the server
// cannot see the session end, and grant the lock, before. In the first
// trial the watchdog is stopped for a second around the kill, which
// widens the window: were the server to see the session end with the
// wrapper, the waiter would start while the tree still runs.
func TestWrapperKilledTakesTheWholeTreeWithIt(t *testing.T) {
	srv := pglocal.Shared(t)
	script := `sleep 300 & echo $! > "$D/child"
( setsid sh -c 'echo $$ > "$D/daemon.tmp"; mv "$D/daemon.tmp" "$D/daemon"; exec sleep 300' & )
ls -l /proc/$$/fd > "$D/fds"
echo $$ > "$D/command"
wait`
	// The waiter's command first records, with shell builtins only, what
	// /proc says of each of the old tree's processes.
	waiter := `for p in $P; do read -r l < /proc/$p/stat && echo "$l" >> "$D/seen"; done 2>/dev/null; touch "$D/b"; exec sleep 300`
	for trial := 0; trial < 3; trial++ {
		t.Run(fmt.Sprint("trial", trial), func(t *testing.T) {
			dir, name := t.TempDir(), uniqueName(t)
			w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--", "sh", "-c", script)
			poll(t, "the command, its child and the daemon start", func() bool {
				return exists(filepath.Join(dir, "command")) && exists(filepath.Join(dir, "child")) && exists(filepath.Join(dir, "daemon"))
			})
			pids := map[string]int{}
			var list []string
			for _, f := range []string{"command", "child", "daemon"} {
				pids[f] = readPID(t, filepath.Join(dir, f))
				list = append(list, itoa(pids[f]))
				if !alive(pids[f]) {
					t.Fatalf("the %s (pid %d) is not running", f, pids[f])
				}
			}
			if sid, _ := unix.Getsid(pids["daemon"]); sid != pids["daemon"] {
				t.Fatalf("the daemon's session is %d, want its own (%d): the test does not test setsid", sid, pids["daemon"])
			}
			if pg, _ := syscall.Getpgid(pids["command"]); pg != pids["command"] {
				t.Errorf("the command's process group is %d, want its own (%d): one kill(2) cannot end it", pg, pids["command"])
			}
			if fds, _ := os.ReadFile(filepath.Join(dir, "fds")); bytes.Contains(fds, []byte("socket:")) {
				t.Fatalf("the command has a socket open (the watchdog's copies of the database's must not reach it):\n%s", fds)
			}
			b := start(t, srv.URL, []string{"D=" + dir, "P=" + strings.Join(list, " ")}, "run", "--name", name, "--", "sh", "-c", waiter)
			poll(t, "the other node waits for the lock", func() bool { return strings.Contains(b.stderr.String(), "waiting") })

			watchdog, _, ok := procStat(pids["command"])
			if !ok {
				t.Fatal("cannot find the watchdog")
			}
			if trial == 0 {
				// The test adopts the killed wrapper's watchdog (a
				// subreaper): else its group, orphaned with a stopped
				// member, would get SIGCONT from the kernel at once.
				if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
					t.Fatal(err)
				}
				defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
				if err := syscall.Kill(watchdog, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				defer syscall.Kill(watchdog, syscall.SIGCONT)
			}
			w.signal(t, syscall.SIGKILL)
			killed := time.Now()
			if trial == 0 {
				// Not a synchronisation: the window in which the waiter
				// must not start.
				time.Sleep(time.Second)
				if exists(filepath.Join(dir, "b")) {
					seen, _ := os.ReadFile(filepath.Join(dir, "seen"))
					t.Errorf("the waiter's command started while the killed wrapper's watchdog was stopped; it saw:\n%s\nthe waiter's stderr:\n%s\nthe killed one's:\n%s", seen, b.stderr.String(), w.stderr.String())
				}
				if err := syscall.Kill(watchdog, syscall.SIGCONT); err != nil {
					t.Fatal(err)
				}
				killed = time.Now()
			}
			for time.Since(killed) < 2*time.Second {
				if !alive(pids["command"]) && !alive(pids["child"]) && !alive(pids["daemon"]) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			gone := time.Since(killed)
			if trial == 0 {
				poll(t, "the adopted watchdog exits", func() bool {
					var ws syscall.WaitStatus
					pid, err := syscall.Wait4(watchdog, &ws, syscall.WNOHANG, nil)
					return pid == watchdog || err != nil
				})
			}
			for f, pid := range pids {
				if alive(pid) {
					t.Errorf("the %s (pid %d) still runs 2s after the wrapper was killed", f, pid)
				}
			}
			poll(t, "the waiter's command starts", func() bool { return exists(filepath.Join(dir, "b")) })
			t.Logf("all gone %v after the SIGKILL (or SIGCONT); the waiter's command started %v after", gone.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
			seen, _ := os.ReadFile(filepath.Join(dir, "seen"))
			for _, l := range strings.Split(strings.TrimSpace(string(seen)), "\n") {
				if i := strings.LastIndexByte(l, ')'); i > 0 && i+2 < len(l) && l[i+2] != 'Z' && l[i+2] != 'X' {
					t.Errorf("the old tree still ran when the waiter's command started: %q", l)
				}
			}
			b.signal(t, syscall.SIGTERM)
			b.wait(t)
		})
	}
}

// A stopped watchdog (kill -STOP) cannot keep the command's tree alive
// past a stop: the wrapper kills the watchdog's descendants itself at the
// shutdown timeout, so they are all dead while it still runs. (Once the
// wrapper is gone, the kernel would continue the orphaned, stopped
// watchdog, which would then kill them: too late.)
func TestStoppedWatchdogTreeDiesBeforeTheWrapperExits(t *testing.T) {
	srv := pglocal.Shared(t)
	dir := t.TempDir()
	script := `sleep 300 & echo $! > "$D/child"
( setsid sh -c 'echo $$ > "$D/daemon.tmp"; mv "$D/daemon.tmp" "$D/daemon"; exec sleep 300' & )
echo $$ > "$D/command"
wait`
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--shutdown-timeout", "1s", "--", "sh", "-c", script)
	poll(t, "the command, its child and the daemon start", func() bool {
		return exists(filepath.Join(dir, "command")) && exists(filepath.Join(dir, "child")) && exists(filepath.Join(dir, "daemon"))
	})
	pids := map[string]int{}
	for _, f := range []string{"command", "child", "daemon"} {
		pids[f] = readPID(t, filepath.Join(dir, f))
	}
	watchdog, _, ok := procStat(pids["command"])
	if !ok {
		t.Fatal("cannot find the watchdog")
	}
	if err := syscall.Kill(watchdog, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(watchdog, syscall.SIGCONT)
	w.signal(t, syscall.SIGTERM)
	// (Not w.done: that waits for the output pipes, which the tree holds.)
	wrapperGone := func() bool { return !alive(w.cmd.Process.Pid) }
	poll(t, "the tree dies or the wrapper exits", func() bool {
		return wrapperGone() || !alive(pids["command"]) && !alive(pids["child"]) && !alive(pids["daemon"])
	})
	if wrapperGone() {
		t.Errorf("the wrapper exited before the tree of its stopped watchdog was dead; stderr:\n%s", w.stderr.String())
	}
	w.wait(t)
	for f, pid := range pids {
		if alive(pid) {
			t.Errorf("the %s (pid %d) still runs after the wrapper exited; stderr:\n%s", f, pid, w.stderr.String())
		}
	}
	if !strings.Contains(w.stderr.String(), "the watchdog is stopped") {
		t.Errorf("the wrapper did not say why it killed the command itself; stderr:\n%s", w.stderr.String())
	}
}

// A frozen wrapper's command is dead before another node's command starts.
func TestFrozenWrapperCommandStopsBeforeTakeover(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	a := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--shutdown-timeout", "1s", "--",
		"sh", "-c", `echo $$ > "$D/a"; exec sleep 300`)
	poll(t, "a's command starts", func() bool { return exists(filepath.Join(dir, "a")) })
	pidA := readPID(t, filepath.Join(dir, "a"))
	// b's command records what became of a's command when it started.
	b := start(t, srv.URL, []string{"D=" + dir, "A=" + itoa(pidA)}, "run", "--name", name, "--shutdown-timeout", "1s", "--",
		"sh", "-c", `cat /proc/$A/stat > "$D/a-seen-by-b" 2>/dev/null; touch "$D/b"; exec sleep 300`)
	w := a.cmd.Process.Pid
	if err := syscall.Kill(w, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	defer syscall.Kill(w, syscall.SIGCONT)
	poll(t, "a's command is stopped by its watchdog", func() bool { return !alive(pidA) || exists(filepath.Join(dir, "b")) })
	dead := time.Since(frozen)
	poll(t, "b's command starts", func() bool { return exists(filepath.Join(dir, "b")) })
	t.Logf("a's command was gone %v after its wrapper froze; b's command started %v after", dead.Round(time.Millisecond), time.Since(frozen).Round(time.Millisecond))
	seen, _ := os.ReadFile(filepath.Join(dir, "a-seen-by-b"))
	if i := bytes.LastIndexByte(seen, ')'); i > 0 && i+2 < len(seen) && seen[i+2] != 'Z' {
		t.Fatalf("a's command still ran when b's started: /proc/%d/stat %q; a's stderr:\n%s", pidA, seen, a.stderr.String())
	}
	if err := syscall.Kill(w, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t); code != exitLost {
		t.Errorf("a exited %d, want %d (lost); stderr:\n%s", code, exitLost, a.stderr.String())
	}
	b.signal(t, syscall.SIGTERM)
	b.wait(t)
}

// One SIGTERM to the wrapper reaches the command exactly once, 5 of 5.
func TestOneSignalOneDelivery(t *testing.T) {
	srv := pglocal.Shared(t)
	script := `trap 'echo TERM >> "$D/got"; n=1' TERM
touch "$D/ready"
i=0
while [ $i -lt 10 ]; do sleep 0.1; [ -n "$n" ] && i=$((i+1)); done`
	var wg sync.WaitGroup
	for run := 0; run < 5; run++ {
		dir := t.TempDir()
		w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--", "sh", "-c", script)
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(30 * time.Second)
			for !exists(filepath.Join(dir, "ready")) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
			<-w.done
			got, _ := os.ReadFile(filepath.Join(dir, "got"))
			if n := strings.Count(string(got), "TERM"); n != 1 || w.cmd.ProcessState.ExitCode() != 0 {
				t.Errorf("run %d: the command got SIGTERM %d times, exit %d; want once, 0; stderr:\n%s", run, n, w.cmd.ProcessState.ExitCode(), w.stderr.String())
			}
		}()
	}
	wg.Wait()
}

// openPTY opens a pseudo-terminal by hand: /dev/ptmx, unlocked, and its
// peer under /dev/pts.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}

// Under a terminal the command is the foreground job: it reads a line.
func TestInteractiveCommand(t *testing.T) {
	srv := pglocal.Shared(t)
	master, tty := openPTY(t)
	defer master.Close()
	cmd := exec.Command(os.Args[0], "run", "--name", uniqueName(t), "--", "sh", "-c", `read line; echo "got:$line"`)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "ONLYONE_CLI_UNDER_TEST=1", "DATABASE_URL="+srv.URL)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// A session of its own, whose controlling terminal is the pty: as a
	// shell's foreground job.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	var out bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(&out, master) // until EIO: the terminal's last user is gone
	}()
	if _, err := master.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("onlyone under a terminal: %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatal("onlyone under a terminal did not exit: the command cannot read the terminal")
	}
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	<-read
	if !strings.Contains(out.String(), "got:hello") {
		t.Fatalf("the command did not read the line; terminal output:\n%s", out.String())
	}
}

// watchdogProc is a watchdog started by a test, standing in for the
// wrapper: the test holds the control pipe and reads the reports.
type watchdogProc struct {
	cmd     *exec.Cmd
	control *os.File
	reports chan string
}

func startWatchdog(t *testing.T, deadline int64, shutdown time.Duration, command ...string) *watchdogProc {
	t.Helper()
	ctrlR, ctrlW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{watchdogCommand, "--shutdown-timeout", shutdown.String(), "--deadline", fmt.Sprint(deadline), "--"}, command...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "ONLYONE_CLI_UNDER_TEST=1")
	cmd.ExtraFiles = []*os.File{ctrlR, repW}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctrlR.Close()
	repW.Close()
	p := &watchdogProc{cmd: cmd, control: ctrlW, reports: make(chan string, 16)}
	go func() {
		defer close(p.reports)
		defer repR.Close()
		b := make([]byte, 4096)
		var line []byte
		for {
			n, err := repR.Read(b)
			for _, c := range b[:n] {
				if c == '\n' {
					p.reports <- string(line)
					line = nil
				} else {
					line = append(line, c)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		ctrlW.Close() // the "wrapper" dies: the watchdog kills everything
		_ = cmd.Wait()
	})
	return p
}

func (p *watchdogProc) next(t *testing.T) string {
	t.Helper()
	select {
	case r := <-p.reports:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no report from the watchdog within 30s")
		return ""
	}
}

// The deadline, kept alive only by the wrapper's extensions: while they
// come the command runs; when they stop, the command is stopped (the stop
// signal, then SIGKILL after the shutdown timeout) and the watchdog says
// the lock is no longer vouched for.
func TestWatchdogDeadline(t *testing.T) {
	dir := t.TempDir()
	const lease, shutdown = 300 * time.Millisecond, 500 * time.Millisecond
	p := startWatchdog(t, monoNow()+int64(lease), shutdown,
		"sh", "-c", `trap "" TERM; echo $$ > "`+dir+`/pid"; while :; do sleep 0.05; done`)
	if r := p.next(t); !strings.HasPrefix(r, "started ") {
		t.Fatalf("first report %q, want started", r)
	}
	// Extend for five leases' worth of time: the command must live on.
	extended := time.Now()
	for time.Since(extended) < 5*lease {
		fmt.Fprintf(p.control, "deadline %d\n", monoNow()+int64(lease))
		time.Sleep(lease / 5)
	}
	select {
	case r := <-p.reports:
		t.Fatalf("report %q while the deadline was being extended", r)
	default:
	}
	// Malformed or zero deadlines (a torn or garbled line) must not
	// remove the deadline: it only moves forward.
	fmt.Fprintf(p.control, "deadline 0\ndeadline\ndeadline 12x\ndeadline -5\n")
	stopped := time.Now()
	if r := p.next(t); r != "expired" {
		t.Fatalf("report %q, want expired", r)
	}
	if r := p.next(t); r != "exit 137" {
		t.Fatalf("report %q, want exit 137: a command that ignores SIGTERM is SIGKILLed", r)
	}
	took := time.Since(stopped)
	if took < shutdown {
		t.Errorf("the command was killed %v after the extensions stopped, before the shutdown timeout (%v) after the deadline", took, shutdown)
	}
	if pid := readPID(t, filepath.Join(dir, "pid")); alive(pid) {
		t.Errorf("the command (pid %d) still runs", pid)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("the watchdog exited with %v", err)
	}
}

// A stop request delivers the stop signal once, even when asked again,
// and a second signal of the user's goes through as a plain signal.
func TestWatchdogStopDeliversOnce(t *testing.T) {
	dir := t.TempDir()
	p := startWatchdog(t, 0, 5*time.Second,
		"sh", "-c", `trap 'echo TERM >> "`+dir+`/got"' TERM; trap 'echo INT >> "`+dir+`/got"; exit 3' INT; touch "`+dir+`/ready"; while :; do sleep 0.05; done`)
	if r := p.next(t); !strings.HasPrefix(r, "started ") {
		t.Fatalf("first report %q, want started", r)
	}
	poll(t, "the command is ready", func() bool { return exists(filepath.Join(dir, "ready")) })
	fmt.Fprintf(p.control, "stop %d\nstop %d\n", syscall.SIGTERM, syscall.SIGTERM)
	poll(t, "the command gets SIGTERM", func() bool { return exists(filepath.Join(dir, "got")) })
	fmt.Fprintf(p.control, "signal %d\n", syscall.SIGINT)
	if r := p.next(t); r != "exit 3" {
		t.Fatalf("report %q, want exit 3 (the command's answer to SIGINT)", r)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "got"))
	if string(got) != "TERM\nINT\n" {
		t.Fatalf("the command got %q, want one TERM, then one INT", got)
	}
}

// ^C at the terminal reaches the foreground job, the command, not
// onlyone; the watchdog tells onlyone, which stops instead of restarting.
func TestInterruptFromTheTerminal(t *testing.T) {
	srv := pglocal.Shared(t)
	dir := t.TempDir()
	master, tty := openPTY(t)
	defer master.Close()
	cmd := exec.Command(os.Args[0], "run", "--name", uniqueName(t), "--restart", "permanent", "--", "sh", "-c", `echo x >> "$D/runs"; exec sleep 300`)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "ONLYONE_CLI_UNDER_TEST=1", "DATABASE_URL="+srv.URL, "D="+dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	var out syncBuffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(&out, master)
	}()
	poll(t, "the command starts", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "runs"))
		return string(b) == "x\n"
	})
	if _, err := master.Write([]byte{3}); err != nil { // ^C
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("onlyone did not stop on ^C; terminal output:\n%s", out.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGINT) {
		t.Errorf("exit %d, want %d (the command's, killed by SIGINT); terminal output:\n%s", code, 128+int(syscall.SIGINT), out.String())
	}
	if runs, _ := os.ReadFile(filepath.Join(dir, "runs")); string(runs) != "x\n" {
		t.Errorf("the command ran %d times, want once: ^C stops the service", strings.Count(string(runs), "x"))
	}
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	<-read
}

// TestCommandNotStartedOnHoldLostBeforeItsToken: supervise starts the
// CLI's child at the grant, and the fencing token is handed out once the
// backend has flushed it to WAL. A hold that ends in between (here: the
// flush waits for a synchronous standby that does not exist, and an
// operator terminates the session) must not start the command, with or
// without a token: the server has freed the lock already.
func TestCommandNotStartedOnHoldLostBeforeItsToken(t *testing.T) {
	pglocal.Shared(t) // skips or fails as the environment says
	srv, err := pglocal.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	db := openAdmin(t, srv.URL)
	for _, q := range []string{"ALTER SYSTEM SET synchronous_standby_names = 'nobody'", "SELECT pg_reload_conf()"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	// A grant counts once the server has been up for SessionTimeout (10s
	// by default): past that, the flush is the hold's first statement.
	poll(t, "the new server is past the restart quarantine", func() bool {
		var past bool
		return db.QueryRow(`SELECT pg_catalog.clock_timestamp() - GREATEST(pg_catalog.pg_postmaster_start_time(),
			(SELECT stats_reset FROM pg_catalog.pg_stat_bgwriter)) > interval '11 s'`).Scan(&past) == nil && past
	})
	dir, name := t.TempDir(), uniqueName(t)
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--",
		"sh", "-c", `echo "token=[$ONLYONE_FENCING_TOKEN]" > "$D/started"; exec sleep 60`)
	var pid int
	poll(t, "the holder's flush waits for the (absent) synchronous standby", func() bool {
		return db.QueryRow("SELECT pid FROM pg_catalog.pg_stat_activity WHERE wait_event = 'SyncRep'").Scan(&pid) == nil
	})
	// Not synchronisation: the command must not start whenever the
	// terminate lands; a moment lets the child reach the token first, the
	// order that once started it.
	time.Sleep(200 * time.Millisecond)
	if _, err := db.Exec("SELECT pg_catalog.pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	code := w.wait(t)
	t.Logf("exit %d; stderr:\n%s", code, w.stderr.String())
	if b, err := os.ReadFile(filepath.Join(dir, "started")); err == nil {
		t.Fatalf("the command started on a hold lost before its token was durable: %s (exit %d)\n%s", b, code, w.stderr.String())
	}
}
