package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

func status(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("onlyone status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "the lock's `NAME` (required)")
	dbURL := fs.String("database-url", "", "PostgreSQL `URL` (default: $DATABASE_URL)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: onlyone status --name NAME [flags]\n\nShows who holds the lock NAME: identity, backend pid, client address, session start.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	if *name == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "onlyone status: --name is required, and nothing else\nRun 'onlyone status --help' for usage.\n")
		return exitUsage
	}
	url, err := databaseURL(*dbURL)
	if err != nil {
		fmt.Fprintf(stderr, "onlyone status: %v\n", err)
		return exitUsage
	}
	db, red, err := openDB(ctx, url)
	if err != nil {
		fmt.Fprintf(stderr, "onlyone: %v\n", err)
		return exitError
	}
	defer db.Close()
	h, err := postgres.WhoHolds(ctx, db, *name)
	var waiting int
	if err == nil {
		waiting, err = postgres.Waiting(ctx, db, *name)
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "onlyone: %s\n", red.Err(err))
		return exitError
	case h == nil:
		fmt.Fprintf(stdout, "%s: free, %d waiting (key %d)\n", *name, waiting, postgres.Key(*name))
	default:
		fmt.Fprintf(stdout, "%s: held by %s (backend pid %d, client %s, session since %s), %d waiting (key %d)\n",
			*name, h.ApplicationName, h.PID, h.ClientAddr, h.SessionStart.Format(time.RFC3339), waiting, postgres.Key(*name))
	}
	return 0
}
