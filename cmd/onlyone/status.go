package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// statusJSON is what status --json prints.
type statusJSON struct {
	Name    string      `json:"name"`
	Key     int64       `json:"key"`
	Held    bool        `json:"held"`
	Holder  *holderJSON `json:"holder,omitempty"`
	Waiting int         `json:"waiting"`
}

// holderJSON is the holder's session, as the server shows it to the role
// asking: to a role other than the holder's, without pg_read_all_stats,
// the server hides the client and the session start ("" and null).
type holderJSON struct {
	Identity     string     `json:"identity"`
	Role         string     `json:"role"`
	PID          int        `json:"pid"`
	Client       string     `json:"client"`
	SessionStart *time.Time `json:"session_start"`
}

func status(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("onlyone status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "the lock's `NAME` (required)")
	dbURL := fs.String("database-url", "", "PostgreSQL `URL` (default: $DATABASE_URL)")
	dbURLFile := fs.String("database-url-file", "", "read the PostgreSQL URL from `FILE`")
	asJSON := fs.Bool("json", false, "print the status as one JSON object")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: onlyone status --name NAME [flags]\n\n"+
			"Shows who holds the lock NAME (identity, backend pid, client address, when its session\n"+
			"started) and how many wait for it. Exit status: 0 when the lock is held, %d when it is\n"+
			"free, %d on bad usage, %d on other errors.\n\nFlags:\n", exitFree, exitUsage, exitError)
		printFlags(fs.Output(), fs)
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
	url, _, err := databaseURL(*dbURL, *dbURLFile)
	if err != nil {
		fmt.Fprintf(stderr, "onlyone status: %v\n", err)
		return exitUsage
	}
	db, red, err := openReached(ctx, url)
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
	if err != nil {
		fmt.Fprintf(stderr, "onlyone: %s\n", red.Err(err))
		return exitError
	}
	st := statusJSON{Name: *name, Key: postgres.Key(*name), Held: h != nil, Waiting: waiting}
	if h != nil {
		st.Holder = &holderJSON{Identity: h.ApplicationName, Role: h.Role, PID: h.PID, Client: h.ClientAddr}
		if !h.SessionStart.IsZero() {
			st.Holder.SessionStart = &h.SessionStart
		}
	}
	switch {
	case *asJSON:
		b, _ := json.Marshal(st)
		fmt.Fprintf(stdout, "%s\n", b)
	case h == nil:
		fmt.Fprintf(stdout, "%s: free, %d waiting (key %d)\n", *name, waiting, st.Key)
	default:
		fmt.Fprintf(stdout, "%s: held by %s (role %s, backend pid %d, client %s, session started %s), %d waiting (key %d)\n",
			*name, orUnknown(h.ApplicationName), h.Role, h.PID, orUnknown(h.ClientAddr), sessionStart(h.SessionStart), waiting, st.Key)
	}
	if h == nil {
		return exitFree
	}
	return 0
}

func orUnknown(s string) string {
	if s == "" {
		return "(hidden)"
	}
	return s
}

func sessionStart(t time.Time) string {
	if t.IsZero() {
		return "(hidden)"
	}
	return t.Format(time.RFC3339)
}
