package main

// The watchdog: a small process of onlyone's own (this binary, re-executed
// with the hidden subcommand watchdogCommand) between the wrapper and the
// command. It is the dead man's switch that keeps the command's whole
// process tree from outliving the lock, whatever happens to the wrapper:
//
//   - It is a child subreaper (PR_SET_CHILD_SUBREAPER): a daemon that
//     double-forks or calls setsid leaves the command's process group but
//     stays the watchdog's descendant, so it can be found and killed.
//     Without a terminal the command leads a process group of its own, and
//     a kill starts with one kill(2) of that group; under a terminal the
//     command stays in the watchdog's group, the terminal's foreground
//     group, so that a ^C reaches the watchdog too.
//   - It learns of the wrapper's death at once: the control pipe closes
//     (the kernel closes it when the wrapper dies, however), and a
//     parent-death signal (SIGUSR2) arrives. Either way it SIGKILLs every
//     descendant at once.
//   - It holds copies (dup) of the wrapper's database sockets, the lock's
//     among them, taken when it was started with the lock held (fds 5…,
//     close-on-exec: the command never gets them). A connection ends for
//     the server only when its last copy is closed, and the watchdog
//     closes its copies by exiting, after every descendant is dead. So
//     when the wrapper is SIGKILLed, the server cannot see its session
//     end, and grant the lock elsewhere, while the command's tree lives.
//   - It holds a deadline that only the wrapper extends, after each
//     heartbeat that succeeded, to the moment the lock is vouched for
//     (locker.VouchedUntil). A frozen or stuck wrapper stops extending it;
//     at the deadline the watchdog stops the command as the wrapper would
//     after a loss: SIGTERM, then SIGKILL to every descendant after the
//     shutdown timeout.
//
// The arithmetic of the last case, with the postgres backend: the deadline
// D is VouchedUntil = (send time of the last good heartbeat) + LossTimeout.
// Every descendant is dead by D + ShutdownTimeout + the time to kill and
// reap (under killWait) ≤ D + Grace, since the wrapper sets Grace =
// ShutdownTimeout + killWait. The server ends the silent session, and
// frees the lock, no earlier than (that send time) + SessionTimeout =
// D - LossTimeout + LossTimeout + Grace + Margin = D + Grace + Margin,
// with Margin ≥ 1s (postgres.MinMargin). So the command is gone a margin
// before anyone else can be granted the lock.
//
// The arithmetic of a wrapper killed at t0: the lock's session is left
// idle, and the server can end it in two ways. (a) When the last copy of
// its socket closes: the watchdog's, once it has SIGKILLed the tree and
// reaped it (or waited killWait for that), so after the tree is dead.
// (b) By idle_session_timeout, SessionTimeout after its last query, sent
// at or after the send time of the last good heartbeat: no earlier than
// D - LossTimeout + SessionTimeout = D + Grace + Margin, with D as above.
// If t0 ≤ D, the tree is dead by t0 + killWait ≤ D + killWait < D + Grace
// (it takes milliseconds: a group kill and a /proc sweep); if t0 > D, the
// deadline already stopped it by D + Grace. Either way it is dead at
// least Margin before (b). (A descendant that survives SIGKILL, in
// uninterruptible sleep, is the exception: the watchdog exits killWait
// after the kill whatever, and says so.)
//
// Control messages, wrapper to watchdog, one a line on fd 3:
//
//	deadline N   kill by CLOCK_MONOTONIC time N (ns); a deadline only
//	             moves forward: 0, an older value or a malformed line
//	             is ignored, and an expired one stays expired
//	signal N     deliver signal N to the command's group
//	stop N       deliver N to the group (unless a stop signal was already
//	             delivered), then SIGKILL every descendant after the
//	             shutdown timeout
//
// Reports, watchdog to wrapper, on fd 4:
//
//	started PID  the command runs
//	signal N     the watchdog itself got stop signal N (a terminal's ^C
//	             reaches the foreground group, not the wrapper): the
//	             command got it too
//	expired      the deadline passed: the lock is no longer vouched for
//	exit CODE    the command exited with CODE (128+N for signal N) and
//	             every descendant is gone
//	error CODE MESSAGE   the command could not be started

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchdogCommand is the hidden subcommand that runs the watchdog.
const watchdogCommand = "__watchdog"

// The watchdog's pipes, as numbered in its process.
const (
	controlFD = 3
	reportFD  = 4
	firstDBFD = 5 // then --db-fds copies of database sockets
)

// deathSignal is the watchdog's parent-death signal: one it can catch.
const deathSignal = syscall.SIGUSR2

// monoNow returns CLOCK_MONOTONIC, which every process of the machine
// shares and no clock adjustment moves.
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return ts.Nano()
}

// watchdogMain runs the watchdog and returns its exit status: 0 when it
// reported the command's fate, 1 otherwise.
func watchdogMain(args []string, stderr io.Writer) int {
	fset := flag.NewFlagSet(watchdogCommand, flag.ContinueOnError)
	fset.SetOutput(stderr)
	shutdown := fset.Duration("shutdown-timeout", 5*time.Second, "")
	deadline := fset.Int64("deadline", 0, "")
	dbFDs := fset.Int("db-fds", 0, "")
	tty := fset.Bool("tty", false, "")
	if err := fset.Parse(args); err != nil || fset.NArg() == 0 {
		fmt.Fprintln(stderr, "onlyone: the watchdog is started by onlyone run, not by hand")
		return exitUsage
	}
	ppid := os.Getppid()
	syscall.CloseOnExec(controlFD)
	syscall.CloseOnExec(reportFD)
	for fd := firstDBFD; fd < firstDBFD+*dbFDs; fd++ {
		// Held, never used, until this process exits; the command must
		// not get an authenticated database session.
		syscall.CloseOnExec(fd)
	}
	w := &watchdog{
		shutdown: *shutdown,
		report:   os.NewFile(reportFD, "report"),
		stderr:   stderr,
		pgid:     syscall.Getpgrp(),
		ownGroup: !*tty,
	}
	control := os.NewFile(controlFD, "control")
	if control == nil || w.report == nil {
		fmt.Fprintln(stderr, "onlyone: the watchdog is started by onlyone run, not by hand")
		return exitUsage
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		w.send("error -1 cannot become a child subreaper: %v", err)
		return 1
	}
	// Catch, before the command starts: stop signals reach the whole
	// group (a terminal's ^C, the wrapper's forwarding), and the watchdog
	// must outlive the command to report on it and clean up.
	sigs := make(chan os.Signal, 8)
	// SIGTSTP too: ^Z stops the command, not the watchdog, which goes on
	// enforcing the deadline and reading the control pipe.
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTSTP, deathSignal)
	if os.Getppid() != ppid || ppid == 1 {
		return 1 // the wrapper died before we could watch it: start nothing
	}
	if *deadline != 0 && *deadline <= monoNow() {
		w.send("expired")
		return 1
	}
	return w.run(fset.Args(), control, sigs, *deadline, ppid)
}

type watchdog struct {
	shutdown time.Duration
	report   *os.File
	stderr   io.Writer
	pgid     int  // the watchdog's process group
	ownGroup bool // the command leads a group of its own (no terminal)

	pid       int // the command's
	group     int // the command's process group: pid, or pgid
	mu        sync.Mutex
	cmdReaped bool           // pid is reaped: it may name another process now
	stopping  bool           // a stop signal was delivered
	delivered syscall.Signal // the stop signal delivered, if any
}

func (w *watchdog) send(format string, args ...any) {
	_, _ = fmt.Fprintf(w.report, format+"\n", args...)
}

func (w *watchdog) run(argv []string, control io.Reader, sigs <-chan os.Signal, deadline int64, ppid int) int {
	path, err := exec.LookPath(argv[0])
	if err == nil {
		w.pid, err = syscall.ForkExec(path, argv, &syscall.ProcAttr{
			Env:   os.Environ(),
			Files: []uintptr{0, 1, 2},
			// Without a terminal, in a group of its own, which one
			// kill(2) ends. Under a terminal, in the watchdog's group,
			// the terminal's foreground group: a ^C reaches the
			// watchdog too. Should the watchdog itself be killed, so is
			// the command.
			Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: w.ownGroup},
		})
	}
	w.group = w.pgid
	if w.ownGroup {
		w.group = w.pid
	}
	if err != nil {
		code := 1 // the shell's conventions: 127 not found, 126 not executable
		switch {
		case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
			code = 127
		case errors.Is(err, fs.ErrPermission):
			code = 126
		}
		w.send("error %d cannot start %q: %v", code, argv[0], err)
		return 0
	}
	w.send("started %d", w.pid)

	exited := make(chan syscall.WaitStatus, 1)
	reaped := make(chan struct{})
	go w.reap(exited, reaped)
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(control)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()

	var (
		expiry, kill <-chan time.Time
		expiryTimer  *time.Timer
		status       syscall.WaitStatus
	)
	var current int64 // the deadline in force; 0: none
	setDeadline := func(d int64) {
		// A deadline only moves forward: a malformed line (which parses
		// as 0), a zero or an older value must never remove or shorten
		// the bound on a wrapper that may be frozen.
		if d <= 0 || d <= current {
			return
		}
		if expiryTimer != nil {
			expiryTimer.Stop()
		}
		current = d
		expiryTimer = time.NewTimer(time.Duration(d - monoNow()))
		expiry = expiryTimer.C
	}
	setDeadline(deadline)
	stop := func(sig syscall.Signal) {
		if w.stopping {
			return
		}
		w.stopping, w.delivered = true, sig
		_ = syscall.Kill(-w.group, sig)
		kill = time.After(w.shutdown)
	}
wait:
	for {
		select {
		case status = <-exited:
			break wait
		case line, ok := <-lines:
			if !ok {
				// The wrapper is gone: its lock is free now.
				fmt.Fprintln(w.stderr, "onlyone: the wrapper died: killing the command and everything it started")
				w.killAll()
				lines = nil
				continue
			}
			verb, arg, _ := strings.Cut(line, " ")
			n, err := strconv.ParseInt(arg, 10, 64)
			if err != nil {
				continue // not a line the wrapper writes
			}
			switch verb {
			case "deadline":
				setDeadline(n)
			case "signal":
				_ = syscall.Kill(-w.group, syscall.Signal(n))
			case "stop":
				stop(syscall.Signal(n))
			}
		case sig := <-sigs:
			switch {
			case sig == deathSignal && os.Getppid() != ppid:
				fmt.Fprintln(w.stderr, "onlyone: the wrapper died: killing the command and everything it started")
				w.killAll()
			case (sig == syscall.SIGINT || sig == syscall.SIGTERM) && !w.stopping:
				// Sent to the terminal's foreground group (a ^C), or to
				// every process (a service manager's stop): the command
				// has it. Not passed on: it would get it twice.
				w.stopping, w.delivered = true, sig.(syscall.Signal)
				kill = time.After(w.shutdown)
				w.send("signal %d", sig)
			}
		case <-expiry:
			expiry = nil
			current = math.MaxInt64 // expired for good: no line revives it
			fmt.Fprintln(w.stderr, "onlyone: the wrapper stopped vouching for the lock (frozen or stuck): stopping the command")
			w.send("expired")
			stop(syscall.SIGTERM)
		case <-kill:
			kill = nil
			w.killAll()
		}
	}
	// The command is gone; so must be whatever it started. A stop signal
	// that reached the group with it is reported first.
	select {
	case sig := <-sigs:
		if (sig == syscall.SIGINT || sig == syscall.SIGTERM) && !w.stopping {
			w.stopping = true
			w.send("signal %d", sig)
		}
	default:
	}
	w.killAll()
	select {
	case <-reaped:
	case <-time.After(killWait):
	}
	w.send("exit %d", waitCode(status))
	return 0
}

// reap waits for every child, the command and any orphaned descendant
// handed to this subreaper, and reports the command's status. It returns
// when no child is left.
//
// It waits without reaping (WNOWAIT) for a child to end, then reaps under
// w.mu: killAll signals the command's group only while the command is not
// reaped, so the group's id cannot name someone else's group by then.
func (w *watchdog) reap(exited chan<- syscall.WaitStatus, reaped chan<- struct{}) {
	defer close(reaped)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOWAIT, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			return // ECHILD: nothing left
		}
		w.mu.Lock()
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			if pid == w.pid && (ws.Exited() || ws.Signaled()) {
				w.cmdReaped = true
				exited <- ws // buffered: sent once
			}
		}
		w.mu.Unlock()
	}
}

// killAll SIGKILLs every descendant of the watchdog until none is left.
//
// Without a terminal, the command's process group goes first, with one
// kill(2): the command and all of its group at once, before the /proc
// sweep finds what left the group (setsid daemons).
func (w *watchdog) killAll() {
	w.mu.Lock()
	if w.ownGroup && !w.cmdReaped {
		_ = syscall.Kill(-w.group, syscall.SIGKILL)
	}
	w.mu.Unlock()
	if !killTree(os.Getpid()) {
		fmt.Fprintln(w.stderr, "onlyone: descendants of the command survive SIGKILL (uninterruptible sleep?)")
	}
}

// killTree SIGKILLs every descendant of root until none is left, and
// reports whether none is. A killed process's orphans go to the nearest
// subreaper (the watchdog), so each pass finds what the last one
// orphaned.
func killTree(root int) bool {
	for pass := 0; pass < 100; pass++ {
		pids := descendants(root)
		if len(pids) == 0 {
			return true
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(time.Millisecond) // let the kernel hand the orphans over
	}
	return false
}

// descendants returns the live (not zombie) descendants of pid, from /proc.
func descendants(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	live := map[int]bool{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state, ok := procStat(pid)
		if !ok {
			continue
		}
		children[ppid] = append(children[ppid], pid)
		live[pid] = state != 'Z' && state != 'X'
	}
	var out []int
	stack := []int{root}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range children[p] {
			if live[c] {
				out = append(out, c)
			}
			stack = append(stack, c)
		}
	}
	return out
}

// procStat reads a process's parent and state from /proc/PID/stat.
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0][0], err == nil
}

// waitCode is the shell's convention: the exit status, or 128+signal.
func waitCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
