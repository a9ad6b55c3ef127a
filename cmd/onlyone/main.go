// Command onlyone runs any program as a cluster singleton, backed by a
// PostgreSQL advisory lock: of all the onlyone processes started with the
// same --name against the same database, one at a time runs its command.
//
// Usage:
//
//	onlyone run --name NAME [flags] -- COMMAND [ARGS...]
//	onlyone status --name NAME [--json]
//	onlyone version
//
// The database URL comes from --database-url, --database-url-file or
// DATABASE_URL. Run "onlyone help" or "onlyone COMMAND --help" for the
// flags.
//
// The command runs under a watchdog, this binary re-executed, that kills
// the command and everything it started when onlyone dies or stops
// vouching for the lock (see watchdog.go for how, and for the arithmetic
// that puts the kill before the server can grant the lock elsewhere).
//
// Exit statuses of onlyone itself: 1 an error, 2 bad usage, 3 status of a
// free lock, 4 run --no-wait while another node holds the lock, 75 the
// lock was lost and the command stopped; otherwise the command's.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// Exit statuses of onlyone itself; otherwise it exits with its command's.
const (
	exitError = 1  // an error: the server could not be reached, the command could not start
	exitUsage = 2  // bad flags or arguments
	exitFree  = 3  // status: nobody holds the lock
	exitBusy  = 4  // run --no-wait: another node holds the lock; the command did not run
	exitLost  = 75 // the lock was lost and the command stopped (EX_TEMPFAIL)
)

const usage = `onlyone runs a command on exactly one node at a time, using a PostgreSQL lock.

Usage:
  onlyone run --name NAME [flags] -- COMMAND [ARGS...]
      Wait for the lock called NAME, run COMMAND while it is held, and exit
      with its exit status. The command is stopped (SIGTERM, then SIGKILL
      after --shutdown-timeout) when the lock is lost or onlyone is told to
      stop. With --restart the command is restarted as a supervised service;
      with --at-most-every it runs at most once per period cluster-wide.

  onlyone status --name NAME [--json]
      Show who holds the lock called NAME. Exit status 0 when it is held,
      3 when it is free.

  onlyone version
      Show onlyone's version.

The database URL is --database-url, --database-url-file, or the DATABASE_URL
environment variable; PG* variables and a password file (PGPASSFILE) work too.
Run "onlyone COMMAND --help" for the flags of a command.
`

func main() {
	os.Exit(cli(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// cli runs the command line args and returns the exit status.
func cli(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return run(ctx, args[1:], stdout, stderr)
	case "status":
		return status(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		return version(stdout)
	case watchdogCommand:
		return watchdogMain(args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "onlyone: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

// redactor hides a password in error messages.
type redactor struct{ secret string }

func (r redactor) String(s string) string {
	if r.secret == "" {
		return s
	}
	return strings.ReplaceAll(s, r.secret, "REDACTED")
}

func (r redactor) Err(err error) string { return r.String(err.Error()) }

// signals onlyone forwards to its command.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}
