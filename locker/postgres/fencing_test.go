package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/fence"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

// TestTokensSurviveCrashRestart takes a token, crashes the server
// (immediate stop: no checkpoint, WAL buffers lost), restarts it and takes
// another: it must be larger. As a control, a bare txid_current() is
// measured the same way: without a WAL flush it is handed out again.
func TestTokensSurviveCrashRestart(t *testing.T) {
	pglocal.Shared(t) // skip or fail as the environment says
	if os.Getenv(pglocal.EnvURL) != "" {
		t.Skip("needs a server this test may crash: local PostgreSQL binaries")
	}
	srv, err := pglocal.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if srv.Kind != "local" {
		t.Skipf("needs a local server to crash, got %s", srv.Kind)
	}
	const trials = 10
	ctx := context.Background()
	reissued := 0
	for i := 0; i < trials; i++ {
		db := open(t, "pgx", srv.URL)
		l := newLocker(t, db, "crash-token")
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		before, _ := l.Token()
		// The control: an id taken without a flush.
		var bare int64
		if err := db.QueryRow("SELECT txid_current()").Scan(&bare); err != nil {
			t.Fatal(err)
		}
		if err := srv.Restart(true); err != nil {
			t.Fatal(err)
		}
		_ = l.Release(ctx)
		db.Close()
		db = open(t, "pgx", srv.URL)
		var next int64
		if err := db.QueryRow("SELECT txid_current()").Scan(&next); err != nil {
			t.Fatal(err)
		}
		if next <= bare {
			reissued++
		}
		l2 := newLocker(t, db, "crash-token")
		if err := l2.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		after, _ := l2.Token()
		if after <= before {
			t.Fatalf("trial %d: token %d after the crash, %d before: reissued", i, after, before)
		}
		_ = l2.Release(ctx)
		db.Close()
	}
	t.Logf("%d crash restarts: onlyone's tokens always grew; a bare txid_current() was handed out again in %d of %d", trials, reissued, trials)
}

// TestTokensGrowAcrossProcesses takes tokens in this process and in holder
// processes, alternately.
func TestTokensGrowAcrossProcesses(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		name := uniqueName(t)
		var last uint64
		for i := 0; i < 3; i++ {
			h := startHelper(t, e, "token", name)
			line := h.next(t, 30*time.Second)
			tok, err := strconv.ParseUint(strings.TrimPrefix(line, "token "), 10, 64)
			if err != nil || tok <= last {
				t.Fatalf("helper: %q, want a token above %d", line, last)
			}
			last = tok
			if err := h.cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			l := e.locker(t, name)
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			tok, _ = l.Token()
			if tok <= last {
				t.Fatalf("token %d in this process after %d in a helper", tok, last)
			}
			last = tok
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestStaleHolderWriteRejected: a holder process is SIGSTOPped past the
// takeover; the new holder writes; the old one resumes and writes with its
// old token, and the fence rejects it.
func TestStaleHolderWriteRejected(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		if err := fence.CreateTable(ctx, e.admin); err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.Exec(`CREATE TABLE IF NOT EXISTS fenced_ledger (resource text, writer text, token bigint)`); err != nil {
			t.Fatal(err)
		}
		name := uniqueName(t)
		old := startHelper(t, e, "fence", name)
		line := old.next(t, 30*time.Second)
		oldTok, err := strconv.ParseUint(strings.TrimPrefix(line, "token "), 10, 64)
		if err != nil {
			t.Fatalf("helper: %q", line)
		}
		if err := old.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		l := e.locker(t, name, fast...)
		if err := l.Acquire(ctx); err != nil { // after the server ended the frozen session
			t.Fatal(err)
		}
		newTok, _ := l.Token()
		if newTok <= oldTok {
			t.Fatalf("new token %d, old %d", newTok, oldTok)
		}
		if err := ledgerWrite(ctx, e.db, name, "new", newTok); err != nil {
			t.Fatalf("the new holder's write: %v", err)
		}
		if err := old.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(old.stdin, "write\n"); err != nil {
			t.Fatal(err)
		}
		if got := old.next(t, 30*time.Second); got != "rejected" {
			t.Fatalf("the resumed old holder's write: %q, want rejected", got)
		}
		var writers string
		if err := e.admin.QueryRow(`SELECT string_agg(writer, ',') FROM fenced_ledger WHERE resource = $1`, name).Scan(&writers); err != nil || writers != "new" {
			t.Fatalf("ledger writers %q (%v), want only the new holder", writers, err)
		}
		t.Logf("old holder's token %d was rejected after the new holder (token %d) wrote", oldTok, newTok)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// ledgerWrite is the guarded write both holders make.
func ledgerWrite(ctx context.Context, db *sql.DB, resource, writer string, token uint64) error {
	return fence.Write(ctx, db, resource, token, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO fenced_ledger VALUES ($1, $2, $3)", resource, writer, int64(token))
		return err
	})
}

// fenceHelper is the "fence" helper: it takes the lock, prints its token,
// and on "write" from stdin makes the guarded write with that token —
// without looking at Lost, as a process resumed mid-work would.
func fenceHelper(ctx context.Context, db *sql.DB, name string) int {
	l, ok := helperAcquire(ctx, db, name, fast...)
	if !ok {
		return 1
	}
	tok, _ := l.Token()
	fmt.Println("token", tok)
	buf := make([]byte, 6)
	if _, err := io.ReadFull(os.Stdin, buf); err != nil {
		return 1
	}
	err := ledgerWrite(ctx, db, name, "old", tok)
	switch {
	case errors.Is(err, fence.ErrStale):
		fmt.Println("rejected")
	case err != nil:
		fmt.Println("error", err)
	default:
		fmt.Println("written")
	}
	_ = l.Release(ctx)
	return 0
}
