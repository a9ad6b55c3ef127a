package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/onlyone-go/onlyone/fence"
	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/once"
	"github.com/onlyone-go/onlyone/supervise"
)

// The watchdog's deadline is the lock's VouchedUntil: without it, a
// frozen onlyone's command would run on.
var _ locker.Voucher = (*postgres.Locker)(nil)

// vouchPoll is how often the wrapper looks for a newer VouchedUntil to
// pass to the watchdog: a fraction of the heartbeat interval, so that the
// watchdog's deadline trails the lock's by little.
const vouchPoll = 100 * time.Millisecond

// commandRunner runs the command, under a watchdog, as the supervisor's
// child.
type commandRunner struct {
	args     []string
	env      []string
	shutdown time.Duration
	stdout   io.Writer
	stderr   io.Writer
	lock     locker.Locker
	name     string
	stop     func() // ends the whole run
	tty      bool   // give the command the terminal
	every    time.Duration
	ledger   *once.Ledger
	conns    *connSet // the pool's live connections, held by the watchdog too

	mu       sync.Mutex
	ctrl     *os.File       // the running watchdog's control pipe, or nil
	stopSig  syscall.Signal // what stops the command: SIGTERM, or the signal onlyone got
	stopping bool           // a stop signal was passed on
	code     *int           // the last exit status, once the command has run
}

// A commandError is the command's failure: its exit status, or a failure
// to start it (code < 0).
type commandError struct {
	code int
	msg  string
}

func (e *commandError) Error() string { return e.msg }

// send writes a control message to the running watchdog, if any. Call
// with c.mu held.
func (c *commandRunner) send(format string, args ...any) {
	if c.ctrl != nil {
		// A watchdog that stopped reading (SIGSTOPped by someone) must not
		// hang onlyone once the pipe is full.
		_ = c.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = fmt.Fprintf(c.ctrl, format+"\n", args...)
	}
}

// signal handles a signal sent to onlyone, delivering it to the command
// once: SIGHUP is passed on; SIGINT and SIGTERM are passed on and stop
// the whole run (the watchdog passes on only the first stop signal it is
// asked to: a second one, the user's, goes as a plain signal).
func (c *commandRunner) signal(sig syscall.Signal) {
	c.mu.Lock()
	switch {
	case sig == syscall.SIGHUP:
		c.send("signal %d", sig)
	case c.stopping:
		c.send("signal %d", sig)
	default:
		c.stopSig, c.stopping = sig, c.ctrl != nil
		c.send("stop %d", sig)
	}
	c.mu.Unlock()
	if sig != syscall.SIGHUP {
		c.stop()
	}
}

// childSignal handles a stop signal the watchdog got with the command:
// the terminal's ^C, say. The command has it already: stop the run
// without passing it on again.
func (c *commandRunner) childSignal(sig syscall.Signal) {
	c.mu.Lock()
	if !c.stopping {
		c.stopSig, c.stopping = sig, true
	}
	c.mu.Unlock()
	c.stop()
}

// run claims the period under --at-most-every, starts the watchdog with
// the command, keeps extending its deadline while the lock is vouched
// for, and waits for its report. When ctx ends it asks the watchdog to
// stop the command (the stop signal, SIGKILL to every descendant after
// the shutdown timeout).
func (c *commandRunner) run(ctx context.Context) error {
	if c.every > 0 {
		claim, err := c.ledger.Claim(ctx, c.lock, c.name, c.every)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil // stopped while claiming: the command did not run
		case errors.Is(err, fence.ErrStale):
			return fmt.Errorf("%w: --at-most-every: %w", locker.ErrLost, err)
		case err != nil:
			return &commandError{code: -1, msg: fmt.Sprintf("--at-most-every: %v", err)}
		}
		if !claim.Won {
			fmt.Fprintf(c.stderr, "onlyone: %s ran %v ago (%s by the server's clock), less than --at-most-every %v: not running it again\n",
				c.name, claim.At.Sub(claim.Previous).Round(time.Millisecond), claim.Previous.Format(time.RFC3339), c.every)
			return nil
		}
	}
	// The fencing token first: supervise starts this child at the grant,
	// and the token is handed out once the backend has made it durable.
	// The hold may end meanwhile; the deadline is read after it.
	tok, fenced := supervise.Token(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if _, fencer := c.lock.(locker.Fencer); fencer && !fenced {
		return fmt.Errorf("%w: the hold ended before its fencing token was durable; the command was not started", locker.ErrLost)
	}
	deadline, vouched := c.deadline()
	if !vouched {
		return fmt.Errorf("%w: the lock is no longer vouched for; the command was not started", locker.ErrLost)
	}
	cmd, reports, err := c.startWatchdog(deadline, tok, fenced)
	if err != nil {
		return &commandError{code: -1, msg: err.Error()}
	}
	vouchDone := make(chan struct{})
	var vouching sync.WaitGroup
	vouching.Add(1)
	go func() {
		defer vouching.Done()
		c.vouch(vouchDone)
	}()

	var (
		code     = -1
		startErr string
		expired  bool
		ctxDone  = ctx.Done()
		cmdPID   int // the command's, from the watchdog's report
		backstop <-chan time.Time
		lastStop <-chan time.Time
	)
	for reports != nil {
		select {
		case r, ok := <-reports:
			if !ok {
				reports = nil
				continue
			}
			verb, arg, _ := strings.Cut(r, " ")
			switch verb {
			case "started":
				cmdPID, _ = strconv.Atoi(arg)
			case "exit":
				code, _ = strconv.Atoi(arg)
			case "error":
				startErr = arg
			case "expired":
				expired = true
			case "signal":
				n, _ := strconv.Atoi(arg)
				c.childSignal(syscall.Signal(n))
			}
		case <-ctxDone:
			ctxDone = nil
			c.mu.Lock()
			c.stopping = true
			c.send("stop %d", c.stopSig)
			c.mu.Unlock()
			// The supervisor gives up on this function, and may exit
			// the process, shutdown + killWait after ctx ended. Before
			// that, whatever state the watchdog is in (stopped by
			// someone, say), its descendants are killed from here: at
			// the shutdown timeout, when the watchdog kills them too.
			backstop = time.After(c.shutdown)
		case <-backstop:
			backstop = nil
			if _, state, ok := procStat(cmd.Process.Pid); ok && (state == 'T' || state == 't') {
				fmt.Fprintln(c.stderr, "onlyone: the watchdog is stopped: killing the command and everything it started from here")
			}
			killTree(cmd.Process.Pid)
			lastStop = time.After(killWait / 2)
		case <-lastStop:
			// The watchdog has not reported, half the time to kill
			// later: end it; its report is lost.
			lastStop = nil
			fmt.Fprintln(c.stderr, "onlyone: the watchdog did not report in time: killing it")
			killTree(cmd.Process.Pid)
			_ = cmd.Process.Kill()
		}
	}
	close(vouchDone)
	vouching.Wait()
	werr := cmd.Wait()
	c.mu.Lock()
	_ = c.ctrl.Close()
	c.ctrl = nil
	c.mu.Unlock()
	if c.tty {
		takeTTYBack()
	}

	if startErr != "" {
		scode, msg, _ := strings.Cut(startErr, " ")
		n, err := strconv.Atoi(scode)
		if err != nil || n <= 0 {
			return &commandError{code: -1, msg: msg}
		}
		fmt.Fprintf(c.stderr, "onlyone: %s\n", msg)
		return &commandError{code: n, msg: msg}
	}
	if code < 0 && expired {
		return fmt.Errorf("%w: the lock was no longer vouched for when the watchdog started; the command was not started", locker.ErrLost)
	}
	if code < 0 {
		// The watchdog was killed: its command died with it (its
		// parent-death signal); end what is left of its group and of the
		// command's. (Neither id was reused yet: the watchdog was reaped
		// an instant ago, the command's group lives while its members do.)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if cmdPID > 0 && !c.tty {
			_ = syscall.Kill(-cmdPID, syscall.SIGKILL)
		}
		return &commandError{code: -1, msg: fmt.Sprintf("the watchdog ended without reporting on the command (%v)", werr)}
	}
	c.mu.Lock()
	c.code = &code
	interrupted := c.tty && !c.stopping && (code == 128+int(syscall.SIGINT) || code == 128+int(syscall.SIGQUIT))
	c.mu.Unlock()
	if interrupted {
		// The foreground job died of ^C or ^\ (the watchdog's own copy of
		// the signal may not have come in yet): the user wants it to
		// stop, as a shell assumes of a foreground child that dies so.
		c.childSignal(syscall.Signal(code - 128))
	}
	switch {
	case expired:
		return fmt.Errorf("%w: onlyone did not vouch for the lock in time (was it frozen?), so its watchdog stopped the command", locker.ErrLost)
	case ctx.Err() != nil:
		return nil // stopped as asked: a normal stop
	case code != 0:
		return &commandError{code: code, msg: fmt.Sprintf("%s exited with status %d", c.args[0], code)}
	}
	return nil
}

// startWatchdog starts the watchdog, which starts the command, with the
// fencing token tok in its environment when fenced. reports delivers the
// watchdog's reports, and is closed when it has exited.
func (c *commandRunner) startWatchdog(deadline int64, tok uint64, fenced bool) (*exec.Cmd, <-chan string, error) {
	ctrlR, ctrlW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		ctrlR.Close()
		ctrlW.Close()
		return nil, nil, err
	}
	// Copies of the database connections' sockets, the lock's among them:
	// the watchdog holds them until the command's whole tree is dead.
	var dbFiles []*os.File
	if c.conns != nil {
		var derr error
		if dbFiles, derr = c.conns.dupAll(); derr != nil {
			// Still safe against a frozen onlyone (the deadline); but if
			// it is SIGKILLed, the server may free the lock a few
			// milliseconds before the command's tree is dead.
			fmt.Fprintf(c.stderr, "onlyone: cannot give the watchdog a copy of a database connection (%v): should onlyone be killed, the lock may be freed a moment before the command is dead\n", derr)
		}
	}
	defer func() {
		for _, f := range dbFiles {
			f.Close()
		}
	}()
	args := append([]string{watchdogCommand, "--shutdown-timeout", c.shutdown.String(),
		"--deadline", strconv.FormatInt(deadline, 10), "--db-fds", strconv.Itoa(len(dbFiles)), "--tty=" + strconv.FormatBool(c.tty), "--"}, c.args...)
	// /proc/self/exe, not os.Executable(): it still works after a deploy
	// replaced the binary on disk.
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = c.env
	if fenced {
		cmd.Env = append(cmd.Env[:len(cmd.Env):len(cmd.Env)], "ONLYONE_FENCING_TOKEN="+strconv.FormatUint(tok, 10))
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.stdout, c.stderr
	cmd.ExtraFiles = append([]*os.File{ctrlR, repW}, dbFiles...) // controlFD, reportFD, firstDBFD...
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSignal}
	if c.tty {
		cmd.SysProcAttr.Foreground, cmd.SysProcAttr.Ctty = true, 0
	}
	err = cmd.Start()
	ctrlR.Close()
	repW.Close()
	if err != nil {
		ctrlW.Close()
		repR.Close()
		return nil, nil, fmt.Errorf("cannot start the watchdog: %w", err)
	}
	c.mu.Lock()
	c.ctrl = ctrlW
	c.stopping = false
	c.mu.Unlock()
	reports := make(chan string)
	go func() {
		defer close(reports)
		defer repR.Close()
		sc := bufio.NewScanner(repR)
		for sc.Scan() {
			reports <- sc.Text()
		}
	}()
	return cmd, reports, nil
}

// deadline is the watchdog's deadline: the moment the lock is vouched
// for, on CLOCK_MONOTONIC; 0 for a Locker that does not say.
// The second result is false when the Locker says the lock is not vouched
// for any more (the hold ended).
func (c *commandRunner) deadline() (int64, bool) {
	v, ok := locker.VouchedUntil(c.lock)
	switch {
	case !ok:
		return 0, true
	case v.IsZero() || !time.Now().Before(v):
		return 0, false
	}
	return monoNow() + int64(time.Until(v)), true
}

// vouch passes each newer VouchedUntil on to the watchdog until done is
// closed. Only this extends the watchdog's deadline: a frozen or stuck
// onlyone stops extending it.
func (c *commandRunner) vouch(done <-chan struct{}) {
	if _, ok := c.lock.(locker.Voucher); !ok {
		return
	}
	var last time.Time
	t := time.NewTicker(vouchPoll)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		v, _ := locker.VouchedUntil(c.lock)
		if v.IsZero() || !v.After(last) {
			continue
		}
		last = v
		c.mu.Lock()
		c.send("deadline %d", monoNow()+int64(time.Until(v)))
		c.mu.Unlock()
	}
}

// lastCode is onlyone's exit status after a shutdown: the command's last
// exit status, or 128+signal if it never ran.
func (c *commandRunner) lastCode(ctx context.Context) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.code != nil {
		return *c.code
	}
	if ctx.Err() != nil {
		return 128 + int(c.stopSig)
	}
	return 0
}
