// Package once runs a job at most once per period across a cluster:
// whichever node's scheduler fires first runs it, and the others, however
// late or skewed their clocks and start times, find the run recorded and
// skip it.
//
// A lock alone does not give this. Nodes whose cron fires at slightly
// different moments take the lock one after the other, and each runs the
// job (measured with the CLI: three nodes started together ran a nightly
// job three times, 2 s apart). What is missing is a record of the last
// run. A Ledger keeps one, in a small table of its own:
//
//	name     text PRIMARY KEY   -- the job
//	last_run timestamptz        -- when its last run was claimed, by the server's clock
//	token    bigint             -- the fencing token of the hold that claimed it
//
// Claim is called while a lock is held, by a Locker that hands out fencing
// tokens (a locker.Fencer, such as *postgres.Locker). In one transaction,
// it checks the hold's token with package fence (so a holder that lost its
// lock without knowing it cannot claim after a newer holder did), reads
// the last run, and records a new one if the last is at least every ago
// by the server's clock, or there is none. Only the server's clock is
// read: the nodes' clocks may disagree.
//
// # At most once, not at least once
//
// The run is recorded before the job starts. A node that crashes in the
// middle of the job, or whose lock is lost while it runs, leaves the run
// recorded: no node runs the job again before the period is over. This is
// the choice that keeps the promise "0 times, never 2"; a job that must
// not be skipped needs its own record of completion, and an operator (or
// a later period) to rerun it.
//
// # Per-tick deduplication
//
// A scheduler that fires every P on every node (gocron, robfig/cron, a
// crontab) gets each tick run once by claiming with the job's name as key
// and every set to less than P — P/2 is a good choice: a node whose tick
// fires up to P/2 after the first finds the tick done, and the next tick,
// about P later, is claimed afresh. The lock must be held while claiming;
// it need not be held while the job runs, unless runs must not overlap.
//
// # Tables and privileges
//
// The ledger's table (DefaultTable unless Ledger.Table names another,
// optionally schema-qualified) and package fence's table are created on
// first use with CREATE TABLE IF NOT EXISTS, only if they do not exist
// yet. When Table names a schema, fence's table is looked up and created
// in that schema too. A role needs, in that schema: USAGE and CREATE to
// create the tables on first use, and SELECT, INSERT, UPDATE on both
// tables afterwards (the owner has them). On PostgreSQL 15 and later an
// ordinary role may no longer create tables in the public schema: give it
// a schema of its own (CREATE SCHEMA jobs AUTHORIZATION app) and set
// Table to "jobs.onlyone_runs", or have an administrator create the
// tables once and grant those privileges.
//
// A plain lock needs none of this: only jobs that use a Ledger need its
// tables.
package once

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/fence"
	"github.com/onlyone-go/onlyone/locker"
)

// DefaultTable is the ledger's table when Ledger.Table is empty.
const DefaultTable = "onlyone_runs"

// A Ledger records the last run of named jobs in a table of DB's database.
// The zero value is not usable: DB must be set. A Ledger may be used by
// many goroutines at once.
type Ledger struct {
	// DB reaches the database of the table. It need not be the database
	// of the lock, but every node must use the same.
	DB *sql.DB

	// Table names the ledger's table: an unquoted identifier, optionally
	// qualified by a schema ("jobs.onlyone_runs"). Default DefaultTable,
	// in the first schema of the role's search_path.
	Table string

	mu    sync.Mutex
	ready bool // the tables exist
}

// A Claim is what Claim found and did.
type Claim struct {
	// Won is true when this call recorded a run: the caller runs the job.
	// When false, a run was recorded less than every ago: skip the job.
	Won bool
	// Previous is the last run recorded before this call, by the server's
	// clock; zero if the job never ran.
	Previous time.Time
	// At is the server's time at the claim: the recorded run when Won.
	At time.Time
}

// Next returns the earliest time, by the server's clock, at which a claim
// with period every can be won: At when c was won or the job never ran,
// else Previous + every.
func (c Claim) Next(every time.Duration) time.Time {
	if c.Won || c.Previous.IsZero() {
		return c.At
	}
	return c.Previous.Add(every)
}

// identifier is what Ledger.Table accepts: names that need no quoting.
var identifier = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$`)

// tables returns the ledger's table and fence's, and the schema, if any.
func (g *Ledger) tables() (runs, fenceTable, schema string, err error) {
	runs = g.Table
	if runs == "" {
		runs = DefaultTable
	}
	if !identifier.MatchString(runs) || len(runs) > 127 {
		return "", "", "", fmt.Errorf("once: %w: Table %q: want an unquoted identifier, optionally schema-qualified", locker.ErrConfig, runs)
	}
	runs = strings.ToLower(runs) // as the server folds it
	fenceTable = fence.Table
	if i := strings.IndexByte(runs, '.'); i >= 0 {
		schema = runs[:i]
		fenceTable = schema + "." + fence.Table
	}
	return runs, fenceTable, schema, nil
}

// Claim records a run of the job name now, by the server's clock, if the
// last recorded run is at least every ago or there is none, and reports
// what it found. Call it while l holds its lock; l must hand out fencing
// tokens (a locker.Fencer). When Won is true, run the job; the run counts
// from now on, even if the job never finishes.
//
// Claim returns an error matching locker.ErrNotHeld when l does not hold
// its lock, fence.ErrStale when a holder with a newer token has claimed
// for this name (l lost its lock), and locker.ErrConfig for a Locker
// without tokens, an empty name, a period that is not positive or a bad
// Table. On any error, do not run the job. (An error can hide a run that
// was recorded — a commit whose answer was lost — never the reverse: the
// job then waits for the next period, which keeps "at most once".)
func (g *Ledger) Claim(ctx context.Context, l locker.Locker, name string, every time.Duration) (Claim, error) {
	runs, fenceTable, schema, err := g.tables()
	switch {
	case err != nil:
		return Claim{}, err
	case g.DB == nil:
		return Claim{}, fmt.Errorf("once: %w: nil Ledger.DB", locker.ErrConfig)
	case name == "":
		return Claim{}, fmt.Errorf("once: %w: empty job name", locker.ErrConfig)
	case every <= 0:
		return Claim{}, fmt.Errorf("once: %w: period %v, want a positive duration", locker.ErrConfig, every)
	}
	if _, ok := l.(locker.Fencer); !ok {
		return Claim{}, fmt.Errorf("once: %w: the Locker (%T) has no fencing tokens", locker.ErrConfig, l)
	}
	token, held := locker.Token(l)
	if !held {
		return Claim{}, fmt.Errorf("once: claiming %s: %w", name, locker.ErrNotHeld)
	}
	if err := g.create(ctx, runs, fenceTable, schema); err != nil {
		return Claim{}, err
	}

	tx, err := g.DB.BeginTx(ctx, nil)
	if err != nil {
		return Claim{}, fmt.Errorf("once: claiming %s: %w", name, err)
	}
	defer tx.Rollback() // after Commit, a no-op
	if schema != "" {
		// fence's statements name its table unqualified: find it next
		// to the ledger's. (pg_catalog is still searched first.)
		if _, err := tx.ExecContext(ctx, "SET LOCAL search_path TO "+schema); err != nil {
			return Claim{}, fmt.Errorf("once: claiming %s: %w", name, err)
		}
	}
	// The fence row stays locked until the transaction ends: claims for
	// the same name are serialised, and a stale holder is refused.
	if err := fence.Check(ctx, tx, "once:"+runs+":"+name, token); err != nil {
		return Claim{}, fmt.Errorf("once: claiming %s: %w", name, err)
	}
	var (
		c    Claim
		prev sql.NullTime
	)
	err = tx.QueryRowContext(ctx, claimSQL(runs), name, int64(token), every.Microseconds()).Scan(&c.At, &prev, &c.Won)
	if err != nil {
		return Claim{}, fmt.Errorf("once: claiming %s: %w", name, err)
	}
	if prev.Valid {
		c.Previous = prev.Time
	}
	if err := tx.Commit(); err != nil {
		return Claim{}, fmt.Errorf("once: claiming %s: %w", name, err)
	}
	return c, nil
}

// claimSQL reads the last run and the server's time and, if the last run
// is at least the period ($3 µs) ago or missing, records a run now with
// the token ($2), in one statement: the result says what it found and
// whether it recorded.
func claimSQL(runs string) string {
	return `WITH prev AS (SELECT last_run FROM ` + runs + ` WHERE name = $1),
	now AS (SELECT pg_catalog.clock_timestamp() AS at),
	won AS (INSERT INTO ` + runs + ` AS r (name, last_run, token)
		SELECT $1, now.at, $2 FROM now
		WHERE NOT EXISTS (SELECT 1 FROM prev WHERE prev.last_run > now.at - $3::bigint * interval '1 microsecond')
		ON CONFLICT (name) DO UPDATE SET last_run = EXCLUDED.last_run, token = EXCLUDED.token
		RETURNING 1)
	SELECT now.at, (SELECT last_run FROM prev), EXISTS (SELECT 1 FROM won) FROM now`
}

// Do claims a run of name with Claim and, if it was won, runs fn. It
// returns the claim and fn's error. fn is not run when ctx is done after
// the claim was won: the run stays recorded (at most once).
func (g *Ledger) Do(ctx context.Context, l locker.Locker, name string, every time.Duration, fn func(context.Context) error) (Claim, error) {
	c, err := g.Claim(ctx, l, name, every)
	if err != nil || !c.Won {
		return c, err
	}
	if err := ctx.Err(); err != nil {
		return c, err
	}
	return c, fn(ctx)
}

// LastRun returns the last recorded run of name by the server's clock, and
// false if there is none (or the table does not exist yet). It needs no
// lock.
func (g *Ledger) LastRun(ctx context.Context, name string) (time.Time, bool, error) {
	runs, _, _, err := g.tables()
	if err != nil {
		return time.Time{}, false, err
	}
	if g.DB == nil {
		return time.Time{}, false, fmt.Errorf("once: %w: nil Ledger.DB", locker.ErrConfig)
	}
	var exists bool
	if err := g.DB.QueryRowContext(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, runs).Scan(&exists); err != nil {
		return time.Time{}, false, fmt.Errorf("once: last run of %s: %w", name, err)
	}
	if !exists {
		return time.Time{}, false, nil
	}
	var last sql.NullTime
	err = g.DB.QueryRowContext(ctx, `SELECT last_run FROM `+runs+` WHERE name = $1`, name).Scan(&last)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("once: last run of %s: %w", name, err)
	}
	return last.Time, last.Valid, nil
}

// create makes the tables if they do not exist. It looks first, because
// CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when the
// table exists, and a role that uses tables made for it may lack it.
func (g *Ledger) create(ctx context.Context, runs, fenceTable, schema string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ready {
		return nil
	}
	var haveRuns, haveFence bool
	err := g.DB.QueryRowContext(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL, pg_catalog.to_regclass($2) IS NOT NULL`, runs, fenceTable).
		Scan(&haveRuns, &haveFence)
	if err != nil {
		return fmt.Errorf("once: looking for %s and %s: %w", runs, fenceTable, err)
	}
	if !haveRuns {
		_, err := g.DB.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+runs+` (
			name     text PRIMARY KEY,
			last_run timestamptz NOT NULL,
			token    bigint NOT NULL)`)
		if err != nil && !concurrentCreate(err) {
			return fmt.Errorf("once: creating %s (see the package doc for the privileges it needs): %w", runs, err)
		}
	}
	if !haveFence {
		if err := g.createFence(ctx, schema); err != nil && !concurrentCreate(err) {
			return fmt.Errorf("once: creating %s (see the package doc for the privileges it needs): %w", fenceTable, err)
		}
	}
	g.ready = true
	return nil
}

// createFence creates fence's table, in schema if it is not empty.
func (g *Ledger) createFence(ctx context.Context, schema string) error {
	if schema == "" {
		return fence.CreateTable(ctx, g.DB)
	}
	tx, err := g.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "SET LOCAL search_path TO "+schema); err != nil {
		return err
	}
	if err := fence.CreateTable(ctx, tx); err != nil {
		return err
	}
	return tx.Commit()
}

// concurrentCreate reports whether err is what CREATE TABLE IF NOT EXISTS
// returns when another session created the same table at the same moment
// (unique_violation on the catalog, or duplicate_table).
func concurrentCreate(err error) bool {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState() == "23505" || s.SQLState() == "42P07"
	}
	return false
}
