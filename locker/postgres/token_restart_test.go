package postgres_test

import (
	"context"
	"testing"

	"github.com/onlyone-go/onlyone/locker/postgres"
)

// TestTokensAcrossCrashesSyncCommitOff takes a token, crashes the server
// (restart -m immediate) at once, and takes another, four times, in a
// database tuned to synchronous_commit = off: the tokens must grow
// strictly. Without forcing the flush, the transaction id of a commit that
// was not flushed is forgotten by the crash and handed out again; the
// control (a bare txid_current(), same database) shows how often.
func TestTokensAcrossCrashesSyncCommitOff(t *testing.T) {
	srv := ownServer(t)
	admin := open(t, "pgx", srv.URL)
	for _, q := range []string{"CREATE DATABASE async", "ALTER DATABASE async SET synchronous_commit = off"} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	url := srv.URLWith("", "", "async")
	ctx := context.Background()
	var last uint64
	for i := 0; i < 4; i++ {
		d := drivers[i%len(drivers)]
		db := open(t, d, url)
		l, err := postgres.New(db, uniqueName(t), restartSettings...)
		if err != nil {
			t.Fatal(err)
		}
		// The first Acquire after a crash (whose token must exceed the
		// last one before it) waits out the restart quarantine, during
		// which the WAL writer flushes anyway; the second is granted at
		// once, and the crash follows it at once.
		for j := 0; j < 2; j++ {
			if j == 1 {
				if err := l.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			tok, _ := l.Token()
			if tok <= last {
				t.Fatalf("crash %d (%s): token %d after %d: a token came again", i, d, tok, last)
			}
			last = tok
		}
		restart(t, srv, true)
		<-l.Lost()
		_ = l.Release(ctx)
		db.Close()
	}
	// The control: an id taken without a flush, just before a crash.
	repeats := 0
	for i := 0; i < 2; i++ {
		var before, after uint64
		raw := open(t, "pgx", url)
		if err := raw.QueryRow("SELECT txid_current()").Scan(&before); err != nil {
			t.Fatal(err)
		}
		restart(t, srv, true)
		if err := raw.QueryRow("SELECT txid_current()").Scan(&after); err != nil {
			t.Fatal(err)
		}
		if after <= before {
			repeats++
		}
		raw.Close()
	}
	t.Logf("4 crash restarts with synchronous_commit = off: 8 tokens grew strictly (last %d); control without the flush: a transaction id came again after %d of 2 crashes", last, repeats)
}
