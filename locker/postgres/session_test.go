package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/lockertest"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// quick are Session settings that keep tests short.
var quick = []postgres.Option{
	postgres.WithHeartbeatInterval(100 * time.Millisecond),
	postgres.WithLossTimeout(time.Second),
	postgres.WithGrace(time.Second),
}

func newSession(t *testing.T, db *sql.DB, opts ...postgres.Option) *postgres.Session {
	t.Helper()
	s, err := postgres.NewSession(db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func sessionLocker(t *testing.T, s *postgres.Session, name string) locker.Locker {
	t.Helper()
	l, err := s.Locker(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestSessionConformance(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		lockertest.Run(t, lockertest.Backend{
			New: func(t *testing.T, name string) locker.Locker {
				l := sessionLocker(t, newSession(t, e.db, quick...), name)
				namesMu.Lock()
				names[l] = name
				namesMu.Unlock()
				return l
			},
			Break: func(t *testing.T, l locker.Locker) {
				// The Session's backend: the one that holds the name.
				e.terminate(t, postgres.Key(lockName(t, l)))
			},
			Contenders: 4,
			Rounds:     5,
		})
	})
}

// lockName recovers the name of a Session Locker from its errors' prefix.
func lockName(t *testing.T, l locker.Locker) string {
	t.Helper()
	namesMu.Lock()
	n, ok := names[l]
	namesMu.Unlock()
	if !ok {
		t.Fatal("unknown Locker")
	}
	return n
}

var (
	namesMu sync.Mutex
	names   = map[locker.Locker]string{}
)

// TestSessionManyNames holds many names of one Session on one connection
// and a second Session takes them over when the first is closed.
func TestSessionManyNames(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		base := uniqueName(t)
		const n = 50
		a := newSession(t, e.db, append(quick, postgres.WithIdentity("session-a"), postgres.WithSpread(false))...)
		var ls []locker.Locker
		for i := 0; i < n; i++ {
			ls = append(ls, sessionLocker(t, a, fmt.Sprintf("%s.%d", base, i)))
		}
		for _, l := range ls {
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if got := e.sessions(t, "session-a"); got > 2 {
			t.Errorf("session a has %d server connections, want at most 2", got)
		}
		b := newSession(t, e.db, append(quick, postgres.WithIdentity("session-b"), postgres.WithSpread(false))...)
		lb := sessionLocker(t, b, base+".0")
		acquired := make(chan error, 1)
		go func() { acquired <- lb.Acquire(ctx) }()
		select {
		case err := <-acquired:
			t.Fatalf("b acquired a held name: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
		start := time.Now()
		if err := ls[0].Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-acquired; err != nil {
			t.Fatal(err)
		}
		t.Logf("graceful hand-over of one name: %v", time.Since(start))
		if tok, ok := lb.(locker.Fencer).Token(); !ok || tok == 0 {
			t.Errorf("Token() = %d, %v", tok, ok)
		}
		_ = lb.Release(ctx)
		for _, l := range ls[1:] {
			select {
			case <-l.Lost():
				t.Fatal("Lost closed while held")
			default:
			}
		}
	})
}

// sessions counts the server connections with the application_name id.
func (e *env) sessions(t *testing.T, id string) int {
	t.Helper()
	var n int
	if err := e.admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

var _ = errors.Is
