package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
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
		// Every connection of a's pool carries its name, pinned or not,
		// so that the count below is all that a costs the server.
		id := "session-a-" + base[len(base)-8:]
		a := newSession(t, open(t, e.driver, withApp(e.srv.URL, id)), append(quick, postgres.WithIdentity(id), postgres.WithSpread(false))...)
		var ls []locker.Locker
		for i := 0; i < n; i++ {
			ls = append(ls, sessionLocker(t, a, fmt.Sprintf("%s.%d", base, i)))
		}
		for _, l := range ls {
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if got := e.sessions(t, id); got > 2 {
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
		// The release interrupted a's heartbeat from a's own second
		// connection: still two.
		if got := e.sessions(t, id); got != 2 {
			t.Errorf("after a release, session a has %d server connections, want 2", got)
		}
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

// withApp returns url with application_name set to app: every
// connection of a pool opened with it carries app until a Session or a
// Locker sets its own identity.
func withApp(url, app string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "application_name=" + app
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

// TestSessionLockTableFull fills the server's shared lock table with
// another session's locks: a Session's Acquire then fails with
// ErrLockTableFull, clearly, and the names it holds stay held; once room
// is made, the name is taken.
func TestSessionLockTableFull(t *testing.T) {
	srv := ownServer(t)
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, srv, d, srv.URL)
			// No spreading: the other Session below must not be handed the
			// held name.
			noSpread := slices.Concat(quick, []postgres.Option{postgres.WithSpread(false)})
			s := newSession(t, e.db, noSpread...)
			base := uniqueName(t)
			held := sessionLocker(t, s, base+".held")
			if err := held.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			// Another Session waits for the held name: s watches it, which
			// takes a lock-table entry at every step of its wait.
			other := sessionLocker(t, newSession(t, e.db, noSpread...), base+".held")
			octx, ocancel := context.WithCancel(ctx)
			odone := make(chan error, 1)
			go func() { odone <- other.Acquire(octx) }()
			defer func() { ocancel(); <-odone; _ = other.Release(ctx) }()
			eventually(t, 10*time.Second, "the other Session shows its interest", func() bool {
				var n int
				return e.admin.QueryRow(`SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND classid::bigint = 1869507708`).Scan(&n) == nil && n > 0
			})
			before := e.holders(t, postgres.Key(base+".held"))
			if len(before) != 1 {
				t.Fatalf("holders of the held name: %v, want the Session's backend", before)
			}
			// Asked after the table is full, where no new session can start.
			checker, err := e.admin.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer checker.Close()
			// Fill the table from another session, until the server refuses.
			filler, err := e.admin.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer filler.Close()
			n := 0
			for ; n < 1_000_000; n += 100 {
				_, err = filler.ExecContext(ctx, `SELECT pg_advisory_lock(k) FROM generate_series($1::bigint, $1::bigint + 99) k`, int64(n))
				if err != nil {
					break
				}
			}
			if sqlStateOf(err) != "53200" {
				t.Fatalf("filling the lock table: %v", err)
			}
			t.Logf("the lock table held about %d advisory locks", n)
			more := sessionLocker(t, s, base+".more")
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err = more.Acquire(actx)
			if !errors.Is(err, postgres.ErrLockTableFull) {
				t.Fatalf("Acquire with the lock table full: %v, want ErrLockTableFull", err)
			}
			t.Logf("Acquire: %v", err)
			select {
			case <-held.Lost():
				t.Fatalf("a held name was lost when the table filled: %v", locker.Err(held))
			default:
			}
			// A name released while the table is full is unlocked, and
			// Release says so: a full table stops new takes, not releases.
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			rerr := held.Release(rctx)
			rcancel()
			if rerr != nil {
				t.Fatalf("Release with the lock table full: %v", rerr)
			}
			if after := holdersOn(t, checker, postgres.Key(base+".held")); slices.Contains(after, before[0]) {
				t.Fatalf("after Release, the Session's backend %d still holds the name (holders %v)", before[0], after)
			}
			if _, err := filler.ExecContext(ctx, `SELECT pg_advisory_unlock_all()`); err != nil {
				t.Fatal(err)
			}
			if err := more.Acquire(actx); err != nil {
				t.Fatalf("Acquire once there is room: %v", err)
			}
			_ = more.Release(ctx)
		})
	}
}

// sqlStateOf returns the SQLSTATE of a driver error, or "".
func sqlStateOf(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// TestSessionUnprivileged runs two Sessions as a role with LOGIN and
// nothing else: the first holds 20 names, the second waits for them; when
// an operator terminates the first one's holding backend, every name's
// Lost closes and the second Session takes all of them.
func TestSessionUnprivileged(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		url := unprivileged(t, e)
		noSpread := append(quick, postgres.WithSpread(false))
		a := newSession(t, open(t, e.driver, url), noSpread...)
		b := newSession(t, open(t, e.driver, url), noSpread...)
		base := uniqueName(t)
		const n = 20
		var held, waiting []locker.Locker
		for i := 0; i < n; i++ {
			l := sessionLocker(t, a, fmt.Sprintf("%s.%d", base, i))
			if err := l.Acquire(ctx); err != nil {
				t.Fatal(err)
			}
			if tok, ok := l.(locker.Fencer).Token(); !ok || tok == 0 {
				t.Fatalf("Token() = %d, %v", tok, ok)
			}
			held = append(held, l)
		}
		got := make(chan error, n)
		for i := 0; i < n; i++ {
			l := sessionLocker(t, b, fmt.Sprintf("%s.%d", base, i))
			waiting = append(waiting, l)
			go func() { got <- l.Acquire(ctx) }()
		}
		// Let b's Acquires reach the server: none may succeed.
		select {
		case err := <-got:
			t.Fatalf("an Acquire returned while a held every name: %v", err)
		case <-time.After(500 * time.Millisecond):
		}
		cut := time.Now()
		e.terminate(t, postgres.Key(base+".0"))
		for _, l := range held {
			select {
			case <-l.Lost():
			case <-time.After(5 * time.Second):
				t.Fatal("a name's Lost stayed open after its session was terminated")
			}
			if err := locker.Err(l); !errors.Is(err, locker.ErrLost) {
				t.Errorf("Err() = %v, want ErrLost", err)
			}
		}
		for i := 0; i < n; i++ {
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%d of %d names taken over within 10s", i, n)
			}
		}
		t.Logf("terminate → every name held by the other Session: %v", time.Since(cut))
		for _, l := range waiting {
			_ = l.Release(ctx)
		}
	})
}

// TestSessionSpreadIgnoresUnrelatedSessions: a Session that contends for
// none of a Session's names does not count for its share. Counted, it
// halved the share: the names over it were taken anyway (nobody else
// wanted them) and then, ten heartbeats later, given up with ErrShed,
// again and again.
func TestSessionSpreadIgnoresUnrelatedSessions(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		base := uniqueName(t)
		other := sessionLocker(t, newSession(t, e.db, quick...), base+".unrelated")
		if err := other.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		defer other.Release(ctx)
		a := newSession(t, e.db, quick...)
		var ls []locker.Locker
		for i := 0; i < 4; i++ {
			ls = append(ls, sessionLocker(t, a, fmt.Sprintf("%s.%d", base, i)))
		}
		errs := make(chan error, len(ls))
		for _, l := range ls {
			go func() { errs <- l.Acquire(ctx) }()
		}
		for range ls {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		// 30 heartbeats: a name taken past the share is kept for 10.
		lost := make(chan error, len(ls))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, l := range ls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case <-l.Lost():
					lost <- locker.Err(l)
				case <-stop:
				}
			}()
		}
		select {
		case err := <-lost:
			t.Errorf("a name was given up with no other Session wanting it: %v", err)
		case <-time.After(3 * time.Second):
		}
		close(stop)
		wg.Wait()
		for _, l := range ls {
			if err := l.Release(ctx); err != nil {
				t.Error(err)
			}
		}
	})
}

// TestSessionSpreadToSessionWithOtherNames: a Session that holds names of
// its own and then contends for names another holds all of still gets
// its share of them: it shows an interest in one of them, so the holder
// counts it.
func TestSessionSpreadToSessionWithOtherNames(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		base := uniqueName(t)
		const n = 10
		a, b := newSession(t, e.db, quick...), newSession(t, e.db, quick...)
		own := sessionLocker(t, b, base+".own")
		if err := own.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		w := newWorkers(t, base, n)
		w.run(0, a)
		eventually(t, 5*time.Second, "a holds every name", func() bool { return w.count(0) == n })
		w.run(1, b)
		eventually(t, 10*time.Second, "the names spread over a and b", func() bool { return w.count(0) == n/2 && w.count(1) == n/2 })
		w.stop()
		// Shed on purpose: a supervisor logs it as routine (ErrHandedOver).
		if len(w.losses) == 0 {
			t.Error("no name was lost, yet half moved")
		}
		for _, err := range w.losses {
			if !errors.Is(err, postgres.ErrShed) || !errors.Is(err, locker.ErrHandedOver) || !errors.Is(err, locker.ErrLost) {
				t.Errorf("a shed name's Err = %v; want ErrShed, locker.ErrHandedOver and locker.ErrLost", err)
			}
		}
		if err := own.Release(context.Background()); err != nil {
			t.Error(err)
		}
	})
}

// workers run names base.0 … base.n-1 on Sessions, a loop per name and
// Session that acquires, holds until Lost and releases, and record which
// Session holds each name.
type workers struct {
	t      *testing.T
	base   string
	n      int
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	by     map[int]int  // name → Session holding it
	dead   map[int]bool // Sessions whose loops do not acquire again
	losses []error      // why names were lost, in order
}

func newWorkers(t *testing.T, base string, n int) *workers {
	ctx, cancel := context.WithCancel(context.Background())
	w := &workers{t: t, base: base, n: n, ctx: ctx, cancel: cancel, by: map[int]int{}, dead: map[int]bool{}}
	t.Cleanup(w.stop)
	return w
}

// stop ends every loop and waits for them.
func (w *workers) stop() {
	w.cancel()
	w.wg.Wait()
}

// run starts the loops of Session s, called i.
func (w *workers) run(i int, s *postgres.Session) {
	for j := 0; j < w.n; j++ {
		l := sessionLocker(w.t, s, fmt.Sprintf("%s.%d", w.base, j))
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for w.ctx.Err() == nil && !w.isDead(i) {
				if err := l.Acquire(w.ctx); err != nil {
					select { // the Session may be closed: do not spin
					case <-w.ctx.Done():
					case <-time.After(10 * time.Millisecond):
					}
					continue
				}
				w.mu.Lock()
				w.by[j] = i
				w.mu.Unlock()
				select {
				case <-l.Lost():
					w.mu.Lock()
					w.losses = append(w.losses, locker.Err(l))
					w.mu.Unlock()
				case <-w.ctx.Done():
				}
				w.mu.Lock()
				if w.by[j] == i {
					delete(w.by, j)
				}
				w.mu.Unlock()
				_ = l.Release(context.Background())
			}
		}()
	}
}

// kill makes Session i's loops stop acquiring, as if its process had died.
func (w *workers) kill(i int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dead[i] = true
}

func (w *workers) isDead(i int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dead[i]
}

// count returns how many names the Sessions of holds.
func (w *workers) count(of ...int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := 0
	for _, s := range w.by {
		if slices.Contains(of, s) {
			c++
		}
	}
	return c
}

// TestSessionCloseBoundedOnSilentNetwork: Close returns within Grace +
// HeartbeatInterval + 2s when the network to the server goes silent,
// with both drivers (lib/pq ignores deadlines there); the connections it
// could not end are destroyed once the driver gives them back.
func TestSessionCloseBoundedOnSilentNetwork(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		proxy, err := faultproxy.Start(e.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer proxy.Close()
		s := newSession(t, open(t, e.driver, e.srv.URLVia(proxy.Addr())), quick...)
		l := sessionLocker(t, s, uniqueName(t))
		if err := l.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		proxy.Drop()
		start := time.Now()
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		bound := time.Second + 100*time.Millisecond + 2*time.Second // Grace + HeartbeatInterval + 2s
		select {
		case err := <-closed:
			took := time.Since(start)
			t.Logf("Close returned after %v: %v", took.Round(time.Millisecond), err)
			if took > bound+time.Second {
				t.Errorf("Close took %v, want at most %v", took, bound)
			}
		case <-time.After(bound + 10*time.Second):
			t.Fatalf("Close did not return within %v of a silent network", bound+10*time.Second)
		}
		select {
		case <-l.Lost():
		default:
			t.Error("Lost is open after Close")
		}
		proxy.Close() // the driver calls still stuck fail now, and their goroutines end
		if err := l.Release(context.Background()); err != nil {
			t.Error(err)
		}
	})
}

// TestSessionWatchesJoinerAtOnce: a Session that joins is watched from
// the next heartbeat of the Session before it around the ring, not after
// that one's wait on its old target ends (up to WaitChunk, 4s here): a
// crash of the newcomer soon after it joined is taken over in
// milliseconds, well within one heartbeat (1s).
func TestSessionWatchesJoinerAtOnce(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		base := uniqueName(t)
		const n = 6
		w := newWorkers(t, base, n)
		var ids []string
		join := func(i int) {
			id := fmt.Sprintf("joiner-%d-%s", i, base[len(base)-8:])
			ids = append(ids, id)
			w.run(i, newSession(t, e.db, postgres.WithHeartbeatInterval(time.Second), postgres.WithLossTimeout(3*time.Second),
				postgres.WithGrace(time.Second), postgres.WithWaitChunk(4*time.Second), postgres.WithIdentity(id)))
		}
		join(0)
		join(1)
		eventually(t, 20*time.Second, "a and b hold every name", func() bool { return w.count(0) == n/2 && w.count(1) == n/2 })
		join(2)
		eventually(t, 10*time.Second, "the newcomer holds its share", func() bool { return w.count(2) == n/3 && w.count(0, 1, 2) == n })
		var pid int
		// The newcomer's holding backend: its connection that holds locks
		// (the other, the poker, holds none).
		if err := e.admin.QueryRow(`SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
			WHERE a.application_name = $1 AND l.locktype = 'advisory'`, ids[2]).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		w.kill(2)
		if _, err := e.admin.Exec(`SELECT pg_terminate_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
		ended := time.Now()
		// The watcher's wake shows in the first name taken over; the last
		// may wait for a heartbeat now and then (see the package doc).
		eventually(t, 10*time.Second, "a and b take one of the newcomer's names", func() bool { return w.count(0, 1) > n-n/3 })
		first := time.Since(ended)
		eventually(t, 10*time.Second, "a and b hold every name again", func() bool { return w.count(0, 1) == n })
		t.Logf("the newcomer's names taken over: the first %v, the last %v after its session ended", first.Round(time.Millisecond), time.Since(ended).Round(time.Millisecond))
		if first > 500*time.Millisecond {
			t.Errorf("the newcomer's first name was taken over after %v: nobody watched it (want well within one heartbeat, 1s)", first)
		}
		w.stop()
	})
}

// TestSessionCloseDuringStart: Close while an Acquire is starting the
// Session's run — here waiting out the restart quarantine of a fresh
// server, SessionTimeout long — ends that start instead of waiting
// behind it: the Acquire fails, and the name was never held. (Waiting,
// Close would have returned only after the quarantine, and the Acquire
// would have succeeded.)
func TestSessionCloseDuringStart(t *testing.T) {
	srv := ownServer(t)
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			e := newEnv(t, srv, d, srv.URL)
			s, err := postgres.NewSession(e.db, postgres.WithSessionTimeout(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			l := sessionLocker(t, s, uniqueName(t))
			errc := make(chan error, 1)
			go func() { errc <- l.Acquire(context.Background()) }()
			eventually(t, 10*time.Second, "the Session holds its presence key, waiting out the quarantine", func() bool {
				var n int
				return e.admin.QueryRow(`SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted AND classid::bigint = 1869507705`).Scan(&n) == nil && n > 0
			})
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			var during bool
			if err := e.admin.QueryRow(`SELECT pg_catalog.clock_timestamp() - GREATEST(pg_catalog.pg_postmaster_start_time(),
				(SELECT stats_reset FROM pg_catalog.pg_stat_bgwriter)) < interval '1 minute'`).Scan(&during); err != nil {
				t.Fatal(err)
			}
			if !during {
				t.Fatal("Close returned only after the quarantine: it waited behind the Acquire")
			}
			if err := <-errc; err == nil {
				t.Fatal("Acquire succeeded after Close")
			} else {
				t.Logf("Acquire: %v", err)
			}
		})
	}
}
