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
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// The command, its child and a double-forked setsid daemon all die with a
// SIGKILLed wrapper, within 2 s.
func TestWrapperKilledTakesTheWholeTreeWithIt(t *testing.T) {
	srv := pglocal.Shared(t)
	dir := t.TempDir()
	script := `sleep 300 & echo $! > "$D/child"
( setsid sh -c 'echo $$ > "$D/daemon.tmp"; mv "$D/daemon.tmp" "$D/daemon"; exec sleep 300' & )
echo $$ > "$D/command"
wait`
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--", "sh", "-c", script)
	poll(t, "the command, its child and the daemon start", func() bool {
		return exists(filepath.Join(dir, "command")) && exists(filepath.Join(dir, "child")) && exists(filepath.Join(dir, "daemon"))
	})
	pids := map[string]int{}
	for _, f := range []string{"command", "child", "daemon"} {
		pids[f] = readPID(t, filepath.Join(dir, f))
		if !alive(pids[f]) {
			t.Fatalf("the %s (pid %d) is not running", f, pids[f])
		}
	}
	if sid, _ := unix.Getsid(pids["daemon"]); sid != pids["daemon"] {
		t.Fatalf("the daemon's session is %d, want its own (%d): the test does not test setsid", sid, pids["daemon"])
	}
	w.signal(t, syscall.SIGKILL)
	killed := time.Now()
	for time.Since(killed) < 2*time.Second {
		if !alive(pids["command"]) && !alive(pids["child"]) && !alive(pids["daemon"]) {
			t.Logf("all gone %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	for f, pid := range pids {
		if alive(pid) {
			t.Errorf("the %s (pid %d) still runs 2s after the wrapper was killed", f, pid)
		}
	}
}

// A frozen wrapper's command is dead before another node's command starts.
func TestFrozenWrapperCommandStopsBeforeTakeover(t *testing.T) {
	if _, ok := any((*postgres.Locker)(nil)).(locker.Voucher); !ok {
		t.Skip("*postgres.Locker is not a locker.Voucher yet (the safety branch adds it): the watchdog has no deadline to hold")
	}
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	a := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--shutdown-timeout", "1s", "--",
		"sh", "-c", `echo $$ > "$D/a"; exec sleep 300`)
	poll(t, "a's command starts", func() bool { return exists(filepath.Join(dir, "a")) })
	pidA := readPID(t, filepath.Join(dir, "a"))
	// b's command records whether a's command still ran when it started.
	b := start(t, srv.URL, []string{"D=" + dir, "A=" + itoa(pidA)}, "run", "--name", name, "--shutdown-timeout", "1s", "--",
		"sh", "-c", `if kill -0 "$A" 2>/dev/null && ! grep -q '^[^)]*) Z' /proc/$A/stat; then echo overlap > "$D/overlap"; fi; touch "$D/b"; exec sleep 300`)
	w := a.cmd.Process.Pid
	if err := syscall.Kill(w, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(w, syscall.SIGCONT)
	poll(t, "b's command starts", func() bool { return exists(filepath.Join(dir, "b")) })
	if exists(filepath.Join(dir, "overlap")) || alive(pidA) {
		t.Fatal("a's command still ran when b's started")
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
