package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// killWait is how long onlyone waits for a SIGKILLed command to be reaped;
// it is added to --shutdown-timeout for the lock's grace.
const killWait = time.Second

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("onlyone run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "the lock's `NAME` (required); every node of the job uses the same")
	dbURL := fs.String("database-url", "", "PostgreSQL `URL` (default: $DATABASE_URL)")
	shutdown := fs.Duration("shutdown-timeout", 5*time.Second, "how long the command has to exit after SIGTERM before SIGKILL")
	restart := fs.String("restart", "", "restart the command when it exits: `POLICY` permanent (always) or transient (after a failure); default: run it once")
	identity := fs.String("identity", "", "this node's identity, shown by status (default: onlyone/HOSTNAME/PID)")
	verbose := fs.Bool("v", false, "log every transition to stderr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: onlyone run --name NAME [flags] -- COMMAND [ARGS...]\n\n"+
			"Runs COMMAND while this node holds the lock NAME, in its own process group, without a shell.\n"+
			"The command gets ONLYONE_NAME, ONLYONE_IDENTITY, ONLYONE_LOCK_KEY and ONLYONE_FENCING_TOKEN\n"+
			"in its environment.\n"+
			"SIGINT, SIGTERM and SIGHUP are forwarded to it; onlyone exits with its exit status,\n"+
			"%d if the lock was lost (the command was stopped), %d on bad usage, %d on other errors.\n\nFlags:\n", exitLost, exitUsage, exitError)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	command := fs.Args()
	policy, perr := restartPolicy(*restart)
	switch {
	case *name == "":
		return usageError(stderr, "--name is required")
	case len(command) == 0:
		return usageError(stderr, "no command: onlyone run --name NAME -- COMMAND [ARGS...]")
	case *shutdown <= 0:
		return usageError(stderr, "--shutdown-timeout must be positive")
	case perr != nil:
		return usageError(stderr, perr.Error())
	}
	url, err := databaseURL(*dbURL)
	if err != nil {
		return usageError(stderr, err.Error())
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	db, red, err := openDB(ctx, url)
	if err != nil {
		fmt.Fprintf(stderr, "onlyone: %v\n", err)
		return exitError
	}
	defer db.Close()
	opts := []postgres.Option{postgres.WithGrace(*shutdown + killWait), postgres.WithLogger(logger)}
	if *identity != "" {
		opts = append(opts, postgres.WithIdentity(*identity))
	}
	l, err := postgres.New(db, *name, opts...)
	if err != nil {
		return usageError(stderr, red.Err(err))
	}

	c := &commandRunner{
		args:     command,
		env:      append(os.Environ(), "ONLYONE_NAME="+*name, "ONLYONE_IDENTITY="+l.Identity(), "ONLYONE_LOCK_KEY="+strconv.FormatInt(l.Key(), 10)),
		shutdown: *shutdown,
		stdout:   stdout,
		stderr:   stderr,
		stopSig:  syscall.SIGTERM,
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	go func() {
		for {
			select {
			case sig := <-sigs:
				c.signal(sig.(syscall.Signal), cancel)
			case <-ctx.Done():
				return
			}
		}
	}()

	sup := &supervise.Supervisor{
		Restart:         policy,
		ShutdownTimeout: *shutdown + killWait,
		Logger:          logger,
	}
	err = sup.Run(ctx, l, c.run)
	var ce *commandError
	switch {
	case errors.As(err, &ce):
		if ce.code < 0 {
			fmt.Fprintf(stderr, "onlyone: %s\n", ce.msg)
			return exitError
		}
		return ce.code
	case errors.Is(err, locker.ErrLost):
		fmt.Fprintf(stderr, "onlyone: the command was stopped: %s\n", red.Err(err))
		return exitLost
	case err != nil:
		fmt.Fprintf(stderr, "onlyone: %s\n", red.Err(err))
		return exitError
	}
	return c.lastCode(ctx)
}

func usageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "onlyone run: %s\nRun 'onlyone run --help' for usage.\n", msg)
	return exitUsage
}

func restartPolicy(s string) (supervise.RestartPolicy, error) {
	switch s {
	case "", "temporary", "never":
		return supervise.Temporary, nil
	case "permanent", "always":
		return supervise.Permanent, nil
	case "transient", "on-failure":
		return supervise.Transient, nil
	}
	return 0, fmt.Errorf("--restart %q: want permanent or transient", s)
}

// commandRunner runs the command as the supervisor's child.
type commandRunner struct {
	args     []string
	env      []string
	shutdown time.Duration
	stdout   io.Writer
	stderr   io.Writer

	mu      sync.Mutex
	pgid    int            // the running command's process group, or 0
	stopSig syscall.Signal // what stops the command: SIGTERM, or the signal onlyone got
	code    *int           // the last exit status, once the command has run
}

// A commandError is the command's failure: its exit status, or a failure
// to start it (code < 0).
type commandError struct {
	code int
	msg  string
}

func (e *commandError) Error() string { return e.msg }

// signal handles a signal sent to onlyone: SIGHUP is passed on; SIGINT and
// SIGTERM are passed on and stop the whole run.
func (c *commandRunner) signal(sig syscall.Signal, stop func()) {
	c.mu.Lock()
	pgid := c.pgid
	if sig != syscall.SIGHUP {
		c.stopSig = sig
	}
	c.mu.Unlock()
	if pgid != 0 {
		_ = syscall.Kill(-pgid, sig)
	}
	if sig != syscall.SIGHUP {
		stop()
	}
}

// run starts the command in its own process group and waits for it; when
// ctx ends it stops the group: the stop signal, then SIGKILL after the
// shutdown timeout. Whatever is left of the group is killed when the
// command exits, so nothing it started outlives the lock.
func (c *commandRunner) run(ctx context.Context) error {
	cmd := exec.Command(c.args[0], c.args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.stdout, c.stderr
	cmd.Env = c.env
	if tok, ok := supervise.Token(ctx); ok {
		cmd.Env = append(cmd.Env[:len(cmd.Env):len(cmd.Env)], "ONLYONE_FENCING_TOKEN="+strconv.FormatUint(tok, 10))
	}
	// Pdeathsig: if onlyone is SIGKILLed, the kernel kills the command.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		code := -1 // the shell's convention otherwise: 127 not found, 126 not executable
		switch {
		case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
			code = 127
		case errors.Is(err, fs.ErrPermission):
			code = 126
		}
		if code > 0 {
			fmt.Fprintf(c.stderr, "onlyone: cannot start %q: %v\n", c.args[0], err)
		}
		return &commandError{code: code, msg: fmt.Sprintf("cannot start %q: %v", c.args[0], err)}
	}
	pgid := cmd.Process.Pid
	c.mu.Lock()
	c.pgid = pgid
	c.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		c.mu.Lock()
		sig := c.stopSig
		c.mu.Unlock()
		_ = syscall.Kill(-pgid, sig)
		select {
		case err = <-done:
		case <-time.After(c.shutdown):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			err = <-done
		}
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL) // stragglers of the group
	c.mu.Lock()
	c.pgid = 0
	code := exitCode(cmd.ProcessState)
	c.code = &code
	c.mu.Unlock()
	if code != 0 {
		return &commandError{code: code, msg: fmt.Sprintf("%s: %v", c.args[0], err)}
	}
	return nil
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

// exitCode is the shell's convention: the exit status, or 128+signal.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
