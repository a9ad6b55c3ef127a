// Package lockertest checks that a locker.Locker keeps the contract of
// package locker.
//
// A backend's tests call Run with a factory that makes contenders:
//
//	func TestConformance(t *testing.T) {
//		reg := memory.New()
//		lockertest.Run(t, lockertest.Backend{
//			New: func(t *testing.T, name string) locker.Locker { return reg.Locker(name) },
//			Break: func(t *testing.T, l locker.Locker) {
//				reg.Revoke(l.(*memory.Locker).Name())
//			},
//		})
//	}
//
// Run runs one subtest per property: mutual exclusion under contention,
// Lost semantics, contexts honoured, Release idempotent, re-Acquire,
// hand-over to a waiter, names independent, loss delivered to the holder,
// fencing tokens that only grow (for a locker.Fencer), and no goroutine
// left behind. Each wait has a bound of its own — Patience for an
// acquisition or a release, LossPatience for Lost to close after Break —
// and each subtest a watchdog (Timeout) behind them, so a Locker that
// blocks where it must not fails the subtest promptly instead of hanging
// the run.
//
// Run the suite under the race detector (go test -race): several properties
// are races on purpose. The goroutine check compares the goroutines alive
// before and after each subtest, so the suite must not run in parallel with
// other tests of the same binary that start goroutines.
package lockertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/locker"
)

// Backend describes the lock backend under test.
type Backend struct {
	// New returns a new contender for name: each call a distinct Locker
	// that competes with every other Locker made for the same name.
	// Required. Names passed to New are unique to each subtest.
	New func(t *testing.T, name string) locker.Locker

	// Break makes the lock that l holds be lost the way this backend
	// really loses one (the memory backend revokes it; the PostgreSQL
	// backend terminates the holder's session). Optional: the properties
	// that need it are skipped when it is nil.
	Break func(t *testing.T, l locker.Locker)

	// Timeout bounds each property; a property that runs longer fails.
	// Zero means 60s.
	Timeout time.Duration

	// Patience is how long a contender may take to acquire a lock that
	// nobody holds. Zero means 5s.
	Patience time.Duration

	// LossPatience is how long after Break the holder's Lost may take to
	// close: a backend that learns of a loss at its next heartbeat needs
	// a heartbeat interval or more. A Lost that stays open longer fails
	// the property then, not when Timeout fires. Zero means Patience.
	LossPatience time.Duration

	// Contenders and Rounds size the mutual-exclusion property: that many
	// goroutines, each with its own Locker, acquire and release the same
	// name that many times. Zero means 8 and 20.
	Contenders, Rounds int

	// LeakOptions are passed to goleak when the suite looks for goroutines
	// left behind by a property, for backends whose dependencies start
	// long-lived goroutines of their own.
	LeakOptions []goleak.Option
}

// property is one checked part of the contract.
type property struct {
	name       string
	needsBreak bool
	run        func(h *harness)
}

var properties = []property{
	{"LostClosedBeforeAcquire", false, testLostClosedBeforeAcquire},
	{"AcquireRelease", false, testAcquireRelease},
	{"FreshLostPerHold", false, testFreshLostPerHold},
	{"MutualExclusion", false, testMutualExclusion},
	{"WaiterAcquiresAfterRelease", false, testWaiterAcquiresAfterRelease},
	{"AcquireHonoursCancelledContext", false, testAcquireCancelled},
	{"AcquireHonoursExpiringContext", false, testAcquireExpiring},
	{"AcquireCancelledWhileWaiting", false, testAcquireCancelledWhileWaiting},
	{"ReleaseIdempotent", false, testReleaseIdempotent},
	{"NamesIndependent", false, testNamesIndependent},
	{"LossDeliveredToHolder", true, testLossDelivered},
	{"ReacquireAfterLoss", true, testReacquireAfterLoss},
	{"FencingTokensIncrease", false, testFencingTokens},
}

// Run checks b against every property of the locker contract, one subtest
// each.
func Run(t *testing.T, b Backend) {
	t.Helper()
	if b.New == nil {
		t.Fatal("lockertest: Backend.New is nil")
	}
	if b.Timeout <= 0 {
		b.Timeout = 60 * time.Second
	}
	if b.Patience <= 0 {
		b.Patience = 5 * time.Second
	}
	if b.LossPatience <= 0 {
		b.LossPatience = b.Patience
	}
	if b.Contenders <= 0 {
		b.Contenders = 8
	}
	if b.Rounds <= 0 {
		b.Rounds = 20
	}
	for _, p := range properties {
		t.Run(p.name, func(t *testing.T) {
			if p.needsBreak && b.Break == nil {
				t.Skip("lockertest: Backend.Break is nil")
			}
			h := newHarness(t, b)
			defer h.finish()
			p.run(h)
		})
	}
}

// harness is the state of one property's run.
type harness struct {
	t      *testing.T
	b      Backend
	ctx    context.Context // done when the watchdog fires
	cancel context.CancelFunc
	timer  *time.Timer
	fired  chan struct{}
	prefix string
	leak   goleak.Option

	mu      sync.Mutex
	lockers []locker.Locker
}

func newHarness(t *testing.T, b Backend) *harness {
	var buf [4]byte
	_, _ = rand.Read(buf[:])
	h := &harness{
		t:      t,
		b:      b,
		fired:  make(chan struct{}),
		prefix: fmt.Sprintf("lockertest/%s/%s", t.Name(), hex.EncodeToString(buf[:])),
		leak:   goleak.IgnoreCurrent(),
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.timer = time.AfterFunc(b.Timeout, func() {
		defer close(h.fired)
		t.Errorf("lockertest: property did not finish within %v (Backend.Timeout)", b.Timeout)
		h.cancel()
	})
	return h
}

// finish releases every Locker the property made and checks that no
// goroutine outlives them.
func (h *harness) finish() {
	if !h.timer.Stop() {
		<-h.fired
	}
	h.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), h.b.Patience)
	defer cancel()
	h.mu.Lock()
	ls := h.lockers
	h.mu.Unlock()
	for _, l := range ls {
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = l.Release(ctx)
		}()
		select {
		case <-done:
		case <-time.After(h.b.Patience):
			h.t.Errorf("lockertest: Release did not return within %v (Backend.Patience)", h.b.Patience)
			return
		}
	}
	if h.t.Failed() {
		return // a failed property may leave goroutines; that is reported already
	}
	if err := goleak.Find(append([]goleak.Option{h.leak}, h.b.LeakOptions...)...); err != nil {
		h.t.Errorf("lockertest: goroutines leaked by the backend: %v", err)
	}
}

// name returns a lock name unique to this run of this property.
func (h *harness) name(i int) string {
	return fmt.Sprintf("%s/%d", h.prefix, i)
}

// newLocker makes a contender for name and remembers it for finish.
func (h *harness) newLocker(name string) locker.Locker {
	h.t.Helper()
	l := h.b.New(h.t, name)
	if l == nil {
		h.t.Fatal("lockertest: Backend.New returned nil")
	}
	h.mu.Lock()
	h.lockers = append(h.lockers, l)
	h.mu.Unlock()
	return l
}

// call runs f, waiting for it at most until the watchdog fires: a Locker
// that blocks forever fails the property instead of hanging the run.
func (h *harness) call(what string, f func() error) error {
	h.t.Helper()
	res := make(chan error, 1)
	go func() { res <- f() }()
	select {
	case err := <-res:
		return err
	case <-h.fired:
		h.t.Fatalf("lockertest: %s did not return before the watchdog fired", what)
		return nil
	}
}

// acquire calls l.Acquire(ctx) under the watchdog.
func (h *harness) acquire(ctx context.Context, l locker.Locker) error {
	h.t.Helper()
	return h.call("Acquire", func() error { return l.Acquire(ctx) })
}

// mustAcquire acquires l within Patience or fails the property.
func (h *harness) mustAcquire(l locker.Locker, who string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, h.b.Patience)
	defer cancel()
	if err := h.acquire(ctx, l); err != nil {
		h.t.Fatalf("%s: Acquire of a free lock = %v, want nil within %v", who, err, h.b.Patience)
	}
	h.mustBeOpen(l, who+" after Acquire")
}

// mustRelease releases l under the watchdog and wants nil.
func (h *harness) mustRelease(l locker.Locker, who string) {
	h.t.Helper()
	if err := h.call("Release", func() error { return l.Release(h.ctx) }); err != nil {
		h.t.Fatalf("%s: Release = %v, want nil", who, err)
	}
	h.mustBeClosed(l, who+" after Release")
}

func (h *harness) mustBeOpen(l locker.Locker, who string) {
	h.t.Helper()
	select {
	case <-l.Lost():
		h.t.Fatalf("%s: Lost is closed, want open while the lock is held (Err = %v)", who, locker.Err(l))
	default:
	}
	if err := locker.Err(l); err != nil {
		h.t.Fatalf("%s: Err = %v, want nil while the lock is held", who, err)
	}
}

func (h *harness) mustBeClosed(l locker.Locker, who string) {
	h.t.Helper()
	select {
	case <-l.Lost():
	default:
		h.t.Fatalf("%s: Lost is open, want closed when the lock is not held", who)
	}
	if locker.Err(l) == nil {
		h.t.Fatalf("%s: Err = nil, want non-nil when the lock is not held", who)
	}
}

func testLostClosedBeforeAcquire(h *harness) {
	l := h.newLocker(h.name(0))
	h.mustBeClosed(l, "new Locker")
	if err := locker.Err(l); !errors.Is(err, locker.ErrNotHeld) {
		h.t.Errorf("new Locker: Err = %v, want ErrNotHeld", err)
	}
	h.mustRelease(l, "Release before any Acquire")
}

func testAcquireRelease(h *harness) {
	l := h.newLocker(h.name(0))
	h.mustAcquire(l, "holder")
	lost := l.Lost()
	if l.Lost() != lost {
		h.t.Fatal("successive calls to Lost during one hold return different channels")
	}
	if err := h.acquire(h.ctx, l); !errors.Is(err, locker.ErrHeld) {
		h.t.Fatalf("Acquire while holding = %v, want ErrHeld", err)
	}
	h.mustBeOpen(l, "holder after a second Acquire")
	h.mustRelease(l, "holder")
	select {
	case <-lost:
	default:
		h.t.Fatal("the hold's Lost channel is still open after Release")
	}
	if err := locker.Err(l); !errors.Is(err, locker.ErrNotHeld) {
		h.t.Errorf("after Release: Err = %v, want ErrNotHeld", err)
	}
}

func testFreshLostPerHold(h *harness) {
	l := h.newLocker(h.name(0))
	h.mustAcquire(l, "first hold")
	first := l.Lost()
	h.mustRelease(l, "first hold")
	h.mustAcquire(l, "second hold")
	second := l.Lost()
	if second == first {
		h.t.Fatal("the second hold returned the first hold's Lost channel")
	}
	select {
	case <-first:
	default:
		h.t.Fatal("the first hold's Lost channel reopened")
	}
	h.mustRelease(l, "second hold")
}

// holdFor is how long each hold of MutualExclusion lasts at most.
const holdFor = 5 * time.Millisecond

func testMutualExclusion(h *harness) {
	name := h.name(0)
	var (
		active, maxActive atomic.Int32
		acquired          atomic.Int64
		wg                sync.WaitGroup
		errs              = make(chan error, h.b.Contenders)
	)
	for i := 0; i < h.b.Contenders; i++ {
		l := h.newLocker(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < h.b.Rounds; r++ {
				if err := l.Acquire(h.ctx); err != nil {
					errs <- fmt.Errorf("Acquire = %v", err)
					return
				}
				n := active.Add(1)
				for m := maxActive.Load(); n > m && !maxActive.CompareAndSwap(m, n); m = maxActive.Load() {
				}
				acquired.Add(1)
				// Hold for a while, so that a second holder, if the
				// backend lets one in, shows up even when the machine is
				// too busy to run the contenders side by side: until one
				// does (no need to look further), or holdFor has passed.
				for start := time.Now(); active.Load() < 2 && time.Since(start) < holdFor; {
					time.Sleep(holdFor / 50)
				}
				active.Add(-1)
				if err := l.Release(h.ctx); err != nil {
					errs <- fmt.Errorf("Release = %v", err)
					return
				}
			}
		}()
	}
	if err := h.call("the contenders", func() error { wg.Wait(); return nil }); err != nil {
		h.t.Fatal(err)
	}
	close(errs)
	for err := range errs {
		h.t.Error(err)
	}
	if m := maxActive.Load(); m > 1 {
		h.t.Errorf("%d contenders held the lock at once, want at most 1", m)
	}
	if n, want := acquired.Load(), int64(h.b.Contenders*h.b.Rounds); n != want {
		h.t.Errorf("%d acquisitions, want %d", n, want)
	}
}

func testWaiterAcquiresAfterRelease(h *harness) {
	name := h.name(0)
	holder, waiter := h.newLocker(name), h.newLocker(name)
	h.mustAcquire(holder, "holder")

	ctx, cancel := context.WithTimeout(h.ctx, 100*time.Millisecond)
	err := h.acquire(ctx, waiter)
	cancel()
	if err == nil {
		h.t.Fatal("a second contender acquired a held lock")
	}
	h.mustBeClosed(waiter, "waiter after a failed Acquire")

	res := make(chan error, 1)
	go func() { res <- waiter.Acquire(h.ctx) }()
	select {
	case err := <-res:
		h.t.Fatalf("the waiter's Acquire returned %v while the holder held the lock", err)
	default:
	}
	h.mustRelease(holder, "holder")
	select {
	case err := <-res:
		if err != nil {
			h.t.Fatalf("the waiter's Acquire = %v after the holder released, want nil", err)
		}
	case <-h.fired:
		h.t.Fatal("the waiter did not acquire after the holder released")
	}
	h.mustBeOpen(waiter, "waiter")
	h.mustRelease(waiter, "waiter")
}

// mustBeFree checks that nothing holds name: a new contender acquires it
// within Patience.
func (h *harness) mustBeFree(name, why string) {
	h.t.Helper()
	l := h.newLocker(name)
	h.mustAcquire(l, "a new contender "+why)
	h.mustRelease(l, "a new contender "+why)
}

func testAcquireCancelled(h *harness) {
	name := h.name(0)
	l := h.newLocker(name)
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	err := h.acquire(ctx, l)
	if !errors.Is(err, context.Canceled) {
		h.t.Fatalf("Acquire with a cancelled context on a free lock = %v, want an error matching context.Canceled", err)
	}
	h.mustBeClosed(l, "after Acquire with a cancelled context")
	h.mustBeFree(name, "after an Acquire with a cancelled context")
}

func testAcquireExpiring(h *harness) {
	name := h.name(0)
	holder, waiter := h.newLocker(name), h.newLocker(name)
	h.mustAcquire(holder, "holder")
	ctx, cancel := context.WithTimeout(h.ctx, 200*time.Millisecond)
	defer cancel()
	err := h.acquire(ctx, waiter)
	if !errors.Is(err, context.DeadlineExceeded) {
		h.t.Fatalf("Acquire of a held lock with an expiring context = %v, want an error matching context.DeadlineExceeded", err)
	}
	h.mustBeClosed(waiter, "waiter after its context expired")
	h.mustRelease(holder, "holder")
	h.mustBeFree(name, "after a waiter's context expired")
}

func testAcquireCancelledWhileWaiting(h *harness) {
	name := h.name(0)
	holder, waiter := h.newLocker(name), h.newLocker(name)
	h.mustAcquire(holder, "holder")
	ctx, cancel := context.WithCancel(h.ctx)
	res := make(chan error, 1)
	go func() { res <- waiter.Acquire(ctx) }()
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			h.t.Fatalf("Acquire cancelled while waiting = %v, want an error matching context.Canceled", err)
		}
	case <-h.fired:
		h.t.Fatal("Acquire did not return after its context was cancelled")
	}
	h.mustBeClosed(waiter, "waiter after its context was cancelled")
	h.mustRelease(holder, "holder")
	h.mustBeFree(name, "after a waiter was cancelled")
}

func testReleaseIdempotent(h *harness) {
	name := h.name(0)
	l := h.newLocker(name)
	h.mustAcquire(l, "holder")
	h.mustRelease(l, "first Release")
	h.mustRelease(l, "second Release")
	h.mustBeFree(name, "after Release")
	h.mustAcquire(l, "the same Locker, after Release")
	h.mustRelease(l, "the same Locker")
}

func testNamesIndependent(h *harness) {
	a, b := h.newLocker(h.name(0)), h.newLocker(h.name(1))
	h.mustAcquire(a, "holder of one name")
	h.mustAcquire(b, "holder of another name")
	h.mustRelease(a, "holder of one name")
	h.mustRelease(b, "holder of another name")
}

// breakHold breaks l's hold and waits, at most LossPatience, for its Lost
// to close.
func (h *harness) breakHold(l locker.Locker) {
	h.t.Helper()
	lost := l.Lost()
	h.b.Break(h.t, l)
	timer := time.NewTimer(h.b.LossPatience)
	defer timer.Stop()
	select {
	case <-lost:
	case <-timer.C:
		h.t.Fatalf("Lost was not closed within %v of Break (Backend.LossPatience): the holder would go on acting as the holder", h.b.LossPatience)
	case <-h.fired:
		h.t.Fatal("Lost was not closed after Break")
	}
	if _, ok := l.(locker.Errer); ok {
		if err := locker.Err(l); !errors.Is(err, locker.ErrLost) {
			h.t.Fatalf("Err after Break = %v, want an error matching ErrLost", err)
		}
	}
	if l.Lost() != lost && !isClosed(l.Lost()) {
		h.t.Fatal("Lost returned an open channel after the hold was lost")
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func testLossDelivered(h *harness) {
	name := h.name(0)
	holder := h.newLocker(name)
	h.mustAcquire(holder, "holder")
	h.breakHold(holder)
	h.mustRelease(holder, "Release after loss")
	if _, ok := holder.(locker.Errer); ok {
		if err := locker.Err(holder); err == nil {
			h.t.Fatal("Err after loss and Release = nil")
		}
	}
	h.mustBeFree(name, "after the holder lost the lock and released")
}

func testReacquireAfterLoss(h *harness) {
	name := h.name(0)
	holder, other := h.newLocker(name), h.newLocker(name)
	h.mustAcquire(holder, "holder")
	h.breakHold(holder)
	h.mustRelease(holder, "Release after loss")
	h.mustAcquire(other, "another contender after the loss")
	h.mustRelease(other, "the other contender")
	h.mustAcquire(holder, "the Locker that lost, again")
	h.mustRelease(holder, "the Locker that lost")
}

func testFencingTokens(h *harness) {
	a, b := h.newLocker(h.name(0)), h.newLocker(h.name(0))
	if _, ok := a.(locker.Fencer); !ok {
		h.t.Skip("lockertest: not a locker.Fencer")
	}
	if tok, ok := locker.Token(a); ok {
		h.t.Fatalf("Token before Acquire = %d, true; want false", tok)
	}
	var last uint64
	take := func(l locker.Locker, who string) {
		h.t.Helper()
		h.mustAcquire(l, who)
		tok, ok := locker.Token(l)
		if !ok {
			h.t.Fatalf("%s: Token while holding = false", who)
		}
		if tok <= last {
			h.t.Fatalf("%s: token %d, want more than the previous hold's %d", who, tok, last)
		}
		if again, _ := locker.Token(l); again != tok {
			h.t.Fatalf("%s: Token changed during one hold: %d, then %d", who, tok, again)
		}
		last = tok
	}
	for i := 0; i < 3; i++ {
		take(a, "a")
		h.mustRelease(a, "a")
		if _, ok := locker.Token(a); ok {
			h.t.Fatal("Token after Release = true, want false")
		}
		take(b, "b")
		h.mustRelease(b, "b")
	}
	take(h.newLocker(h.name(1)), "a contender for another name")
}
