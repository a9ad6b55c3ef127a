package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/once"
	"github.com/onlyone-go/onlyone/supervise"
)

// killWait bounds how long killing and reaping every descendant takes
// after SIGKILL; it is added to --shutdown-timeout for the lock's grace.
const killWait = time.Second

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("onlyone run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "the lock's `NAME` (required); every node of the job uses the same")
	dbURL := fs.String("database-url", "", "PostgreSQL `URL` (default: $DATABASE_URL); visible to local users in argv, prefer the two below")
	dbURLFile := fs.String("database-url-file", "", "read the PostgreSQL URL from `FILE`")
	shutdown := fs.Duration("shutdown-timeout", 5*time.Second, "how long the command has to exit after SIGTERM before SIGKILL")
	restart := fs.String("restart", "", "restart the command when it exits: `POLICY` permanent (always) or transient (after a failure); default: run it once")
	every := fs.Duration("at-most-every", 0, "run the command at most once per `PERIOD` cluster-wide, whichever node comes first; the others exit 0 without running it")
	table := fs.String("runs-table", once.DefaultTable, "the `TABLE` (optionally schema.table) that records the last run for --at-most-every; created on first use")
	noWait := fs.Bool("no-wait", false, fmt.Sprintf("if another node holds the lock, exit %d at once instead of waiting", exitBusy))
	identity := fs.String("identity", "", "this node's `ID`, shown by status (default: onlyone/HOSTNAME/PID)")
	quiet := fs.Bool("quiet", false, "log only warnings and errors")
	verbose := fs.Bool("v", false, "log every transition (the default; kept for old scripts)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: onlyone run --name NAME [flags] -- COMMAND [ARGS...]\n\n"+
			"Runs COMMAND while this node holds the lock NAME, without a shell, under a watchdog\n"+
			"that kills the command and everything it started if onlyone dies or freezes.\n"+
			"The command gets ONLYONE_NAME, ONLYONE_IDENTITY, ONLYONE_LOCK_KEY and ONLYONE_FENCING_TOKEN\n"+
			"in its environment, and no database password (PGPASSWORD is removed, DATABASE_URL loses\n"+
			"its password). SIGINT, SIGTERM and SIGHUP are delivered to it once each.\n"+
			"Exit status: the command's; %d if the lock was lost (the command was stopped); %d with\n"+
			"--no-wait when another node holds the lock; %d on bad usage; %d on other errors.\n\nFlags:\n",
			exitLost, exitBusy, exitUsage, exitError)
		printFlags(fs.Output(), fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	_ = verbose
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
	case *every < 0:
		return usageError(stderr, "--at-most-every must be positive")
	case *every > 0 && policy != supervise.Temporary:
		return usageError(stderr, "--at-most-every runs a job once per period; it cannot be combined with --restart")
	}
	url, warn, err := databaseURL(*dbURL, *dbURLFile)
	if err != nil {
		return usageError(stderr, err.Error())
	}
	conns := &connSet{}
	db, red, err := openDB(url, conns)
	if err != nil {
		fmt.Fprintf(stderr, "onlyone: %v\n", err)
		return exitError
	}
	defer db.Close()
	level := slog.LevelInfo
	if *quiet {
		level = slog.LevelWarn
	}
	logger := newLogger(stderr, level, red)
	if warn != "" {
		logger.Warn(warn)
	}
	if err := reach(ctx, db, red); err != nil {
		if policy == supervise.Temporary {
			fmt.Fprintf(stderr, "onlyone: %v\n", err)
			return exitError
		}
		// A service: the database may come back; the supervisor retries
		// with backoff and logs every failure.
		logger.Warn("the database cannot be reached; retrying with backoff (--restart)", "err", err)
	}

	opts := []postgres.Option{postgres.WithGrace(*shutdown + killWait), postgres.WithLogger(logger)}
	if *identity != "" {
		opts = append(opts, postgres.WithIdentity(*identity))
	}
	l, err := postgres.New(db, *name, opts...)
	if err != nil {
		return usageError(stderr, red.Err(err))
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var lock locker.Locker = l
	if *noWait {
		lock = &noWaitLocker{Locker: l, busy: cancel}
	}
	c := &commandRunner{
		args:     command,
		env:      commandEnv(os.Environ(), "ONLYONE_NAME="+*name, "ONLYONE_IDENTITY="+l.Identity(), "ONLYONE_LOCK_KEY="+strconv.FormatInt(l.Key(), 10)),
		shutdown: *shutdown,
		stdout:   stdout,
		stderr:   stderr,
		lock:     lock,
		name:     *name,
		stop:     func() { cancel(nil) },
		stopSig:  syscall.SIGTERM,
		tty:      foregroundTTY(),
		conns:    conns,
	}
	if *every > 0 {
		c.every, c.ledger = *every, &once.Ledger{DB: db, Table: *table}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	sigDone := make(chan struct{})
	go func() {
		defer close(sigDone)
		for {
			select {
			case sig := <-sigs:
				c.signal(sig.(syscall.Signal))
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { cancel(nil); <-sigDone }()

	sup := &supervise.Supervisor{
		Restart:         policy,
		ShutdownTimeout: *shutdown + killWait,
		Logger:          logger,
	}
	err = sup.Run(ctx, lock, c.run)
	var (
		ce   *commandError
		busy *busyError
	)
	switch {
	case errors.As(context.Cause(ctx), &busy):
		fmt.Fprintf(stderr, "onlyone: %s: not running the command (--no-wait)\n", busy)
		return exitBusy
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

// newLogger is the text logger of the CLI: no err=<nil> or delay=0s on
// lines that have none, lock names unquoted, no password.
func newLogger(w io.Writer, level slog.Level, red redactor) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			v := a.Value.Resolve()
			switch {
			case v.Kind() == slog.KindAny && v.Any() == nil:
				return slog.Attr{}
			case v.Kind() == slog.KindDuration && v.Duration() == 0 && a.Key == "delay":
				return slog.Attr{}
			case a.Key == "lock" && v.Kind() == slog.KindString:
				if s, err := strconv.Unquote(v.String()); err == nil {
					return slog.String(a.Key, s)
				}
			case v.Kind() == slog.KindAny:
				if err, ok := v.Any().(error); ok {
					return slog.String(a.Key, red.Err(err))
				}
			case v.Kind() == slog.KindString:
				return slog.String(a.Key, red.String(v.String()))
			}
			return a
		},
	}))
}
