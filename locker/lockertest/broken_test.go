package lockertest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/lockertest"
	"github.com/onlyone-go/onlyone/locker/memory"
)

// Each broken backend breaks one part of the contract. TestSuiteCatches runs
// the suite against each in a child process (a *testing.T cannot be faked)
// and wants the property named here to fail.
var brokenBackends = []struct {
	name    string
	catcher string // the property that must fail
	make    func(reg *memory.Registry, name string) locker.Locker

	// prompt: run with the default 60s Timeout, and want every property
	// that fails to fail within 2 × Patience, not by the watchdog.
	prompt bool
}{
	{"TwoHolders", "MutualExclusion", func(_ *memory.Registry, name string) locker.Locker {
		return memory.New().Locker(name) // a registry of its own: it never meets the others
	}, false},
	{"LostNeverClosed", "LostClosedBeforeAcquire", func(reg *memory.Registry, name string) locker.Locker {
		return &lostNeverClosed{Locker: reg.Locker(name), open: make(chan struct{})}
	}, true},
	{"LossNeverNoticed", "ReacquireAfterLoss", func(reg *memory.Registry, name string) locker.Locker {
		return &lossNotDelivered{Locker: reg.Locker(name)}
	}, true},
	{"KeepsLockOnCancel", "AcquireHonoursCancelledContext", func(reg *memory.Registry, name string) locker.Locker {
		return &keepsLockOnCancel{reg.Locker(name)}
	}, false},
	{"IgnoresContext", "AcquireHonoursExpiringContext", func(reg *memory.Registry, name string) locker.Locker {
		return &ignoresContext{reg.Locker(name)}
	}, false},
	{"ReleaseKeepsLock", "WaiterAcquiresAfterRelease", func(reg *memory.Registry, name string) locker.Locker {
		return &releaseKeepsLock{Locker: reg.Locker(name)}
	}, false},
	{"StaleLostChannel", "FreshLostPerHold", func(reg *memory.Registry, name string) locker.Locker {
		return &staleLost{Locker: reg.Locker(name)}
	}, false},
	{"SharedNames", "NamesIndependent", func(reg *memory.Registry, _ string) locker.Locker {
		return reg.Locker("every name is this name")
	}, false},
	{"LossNotDelivered", "LossDeliveredToHolder", func(reg *memory.Registry, name string) locker.Locker {
		return &lossNotDelivered{Locker: reg.Locker(name)}
	}, false},
	{"LeaksGoroutine", "AcquireRelease", func(reg *memory.Registry, name string) locker.Locker {
		return &leaksGoroutine{Locker: reg.Locker(name)}
	}, false},
	{"ReleaseFailsWhenIdle", "LostClosedBeforeAcquire", func(reg *memory.Registry, name string) locker.Locker {
		return &releaseFailsWhenIdle{reg.Locker(name)}
	}, false},
	{"TokensPerName", "FencingTokensIncrease", func(reg *memory.Registry, name string) locker.Locker {
		return &tokensPerName{reg.Locker(name)}
	}, false},
}

// TestSuiteCatches is the suite's own test: it has teeth.
func TestSuiteCatches(t *testing.T) {
	if os.Getenv("LOCKERTEST_BROKEN") != "" {
		t.Skip("running as a child")
	}
	for _, bb := range brokenBackends {
		t.Run(bb.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenBackend$/^"+bb.name+"$", "-test.v", "-test.count=1", "-test.timeout=2m")
			cmd.Env = append(os.Environ(), "LOCKERTEST_BROKEN="+bb.name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a backend that is broken (%s):\n%s", bb.name, out)
			}
			want := "--- FAIL: TestBrokenBackend/" + bb.name + "/" + bb.catcher + " "
			if !strings.Contains(string(out), want) {
				t.Fatalf("want %q in the output of the suite:\n%s", want, out)
			}
			if !bb.prompt {
				return
			}
			// "    --- FAIL: TestBrokenBackend/X/Property (0.50s)"
			for _, line := range strings.Split(string(out), "\n") {
				prefix := "--- FAIL: TestBrokenBackend/" + bb.name + "/"
				line = strings.TrimSpace(line)
				if !strings.HasPrefix(line, prefix) {
					continue
				}
				i := strings.LastIndex(line, "(")
				d, err := time.ParseDuration(strings.TrimSuffix(line[i+1:], ")"))
				if err != nil {
					t.Fatalf("cannot read the duration of %q: %v", line, err)
				}
				if d > 2*brokenPatience {
					t.Errorf("%s: failed after %v, want within 2 × Patience (%v)", line, d, 2*brokenPatience)
				}
			}
		})
	}
}

// brokenPatience is the Patience of the suite run against broken backends.
const brokenPatience = 500 * time.Millisecond

// TestBrokenBackend runs the suite against the broken backend named by
// LOCKERTEST_BROKEN; it runs only as TestSuiteCatches's child.
func TestBrokenBackend(t *testing.T) {
	which := os.Getenv("LOCKERTEST_BROKEN")
	if which == "" {
		t.Skip("run by TestSuiteCatches")
	}
	for _, bb := range brokenBackends {
		if bb.name != which {
			continue
		}
		timeout := 2 * time.Second
		if bb.prompt {
			timeout = 0 // the default, 60s: the suite must not need its watchdog
		}
		t.Run(bb.name, func(t *testing.T) {
			reg := memory.New()
			lockertest.Run(t, lockertest.Backend{
				New: func(t *testing.T, name string) locker.Locker { return bb.make(reg, name) },
				Break: func(t *testing.T, l locker.Locker) {
					reg.Revoke(nameOf(l))
					if b, ok := l.(*lossNotDelivered); ok {
						b.revoked()
					}
				},
				Timeout:  timeout,
				Patience: brokenPatience,
			})
		})
	}
}

func nameOf(l locker.Locker) string {
	switch l := l.(type) {
	case *memory.Locker:
		return l.Name()
	case interface{ inner() *memory.Locker }:
		return l.inner().Name()
	}
	panic("unknown locker")
}

type lostNeverClosed struct {
	*memory.Locker
	open chan struct{}
}

func (l *lostNeverClosed) inner() *memory.Locker { return l.Locker }
func (l *lostNeverClosed) Lost() <-chan struct{} { return l.open }
func (l *lostNeverClosed) Err() error            { return nil }

// keepsLockOnCancel takes a free lock even when ctx is done, and says it failed.
type keepsLockOnCancel struct{ *memory.Locker }

func (l *keepsLockOnCancel) inner() *memory.Locker { return l.Locker }
func (l *keepsLockOnCancel) Acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		_ = l.Locker.Acquire(context.Background())
		return err
	}
	return l.Locker.Acquire(ctx)
}

// ignoresContext waits for the lock however long it takes.
type ignoresContext struct{ *memory.Locker }

func (l *ignoresContext) inner() *memory.Locker { return l.Locker }
func (l *ignoresContext) Acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return l.Locker.Acquire(context.Background())
}

// releaseKeepsLock says it released, but leaves the name taken.
type releaseKeepsLock struct {
	*memory.Locker
	mu   sync.Mutex
	gone chan struct{}
}

func (l *releaseKeepsLock) inner() *memory.Locker { return l.Locker }
func (l *releaseKeepsLock) Acquire(ctx context.Context) error {
	if err := l.Locker.Acquire(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	l.gone = make(chan struct{})
	l.mu.Unlock()
	return nil
}
func (l *releaseKeepsLock) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gone == nil {
		return l.Locker.Lost()
	}
	return l.gone
}
func (l *releaseKeepsLock) Err() error {
	if isClosed(l.Lost()) {
		return locker.ErrNotHeld
	}
	return nil
}
func (l *releaseKeepsLock) Release(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gone != nil && !isClosed(l.gone) {
		close(l.gone)
	}
	return nil
}

// staleLost hands out the first hold's channel for every hold.
type staleLost struct {
	*memory.Locker
	mu    sync.Mutex
	first <-chan struct{}
}

func (l *staleLost) inner() *memory.Locker { return l.Locker }
func (l *staleLost) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.Locker.Lost()
	if l.first == nil && !isClosed(c) {
		l.first = c
	}
	if l.first != nil {
		return l.first
	}
	return c
}
func (l *staleLost) Err() error { return nil }

// lossNotDelivered closes Lost on Release only, never on loss.
type lossNotDelivered struct {
	*memory.Locker
	mu   sync.Mutex
	hold chan struct{}
}

func (l *lossNotDelivered) inner() *memory.Locker { return l.Locker }
func (l *lossNotDelivered) Acquire(ctx context.Context) error {
	if err := l.Locker.Acquire(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	l.hold = make(chan struct{})
	l.mu.Unlock()
	return nil
}
func (l *lossNotDelivered) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil {
		return l.Locker.Lost()
	}
	return l.hold
}
func (l *lossNotDelivered) Err() error {
	if isClosed(l.Lost()) {
		return locker.ErrNotHeld
	}
	return nil
}
func (l *lossNotDelivered) revoked() {}
func (l *lossNotDelivered) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.hold != nil && !isClosed(l.hold) {
		close(l.hold)
	}
	l.mu.Unlock()
	return l.Locker.Release(ctx)
}

// leaksGoroutine starts a goroutine per hold that nothing stops.
type leaksGoroutine struct {
	*memory.Locker
}

var forever = make(chan struct{})

func (l *leaksGoroutine) inner() *memory.Locker { return l.Locker }
func (l *leaksGoroutine) Acquire(ctx context.Context) error {
	if err := l.Locker.Acquire(ctx); err != nil {
		return err
	}
	go func() { <-forever }()
	return nil
}

// releaseFailsWhenIdle is not idempotent: Release of nothing is an error.
type releaseFailsWhenIdle struct{ *memory.Locker }

func (l *releaseFailsWhenIdle) inner() *memory.Locker { return l.Locker }
func (l *releaseFailsWhenIdle) Release(ctx context.Context) error {
	if isClosed(l.Lost()) {
		return errors.New("not held")
	}
	return l.Locker.Release(ctx)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// tokensPerName numbers holds per name, so a new name starts again at 1:
// a token smaller than one handed out before.
type tokensPerName struct{ *memory.Locker }

var perName = struct {
	sync.Mutex
	n map[string]uint64
}{n: map[string]uint64{}}

func (l *tokensPerName) inner() *memory.Locker { return l.Locker }
func (l *tokensPerName) Acquire(ctx context.Context) error {
	if err := l.Locker.Acquire(ctx); err != nil {
		return err
	}
	perName.Lock()
	perName.n[l.Name()]++
	perName.Unlock()
	return nil
}
func (l *tokensPerName) Token() (uint64, bool) {
	if _, ok := l.Locker.Token(); !ok {
		return 0, false
	}
	perName.Lock()
	defer perName.Unlock()
	return perName.n[l.Name()], true
}
