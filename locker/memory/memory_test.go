package memory_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/lockertest"
	"github.com/onlyone-go/onlyone/locker/memory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	reg := memory.New()
	lockertest.Run(t, lockertest.Backend{
		New: func(t *testing.T, name string) locker.Locker { return reg.Locker(name) },
		Break: func(t *testing.T, l locker.Locker) {
			if !reg.Revoke(l.(*memory.Locker).Name()) {
				t.Fatal("Revoke found no holder")
			}
		},
	})
}

func TestConformanceTerminate(t *testing.T) {
	reg := memory.New()
	lockertest.Run(t, lockertest.Backend{
		New: func(t *testing.T, name string) locker.Locker { return reg.Locker(name) },
		Break: func(t *testing.T, l locker.Locker) {
			if !reg.Terminate(l.(*memory.Locker).Name()) {
				t.Fatal("Terminate found no holder")
			}
		},
	})
}

func TestRevokeKeepsNameUntilRelease(t *testing.T) {
	reg := memory.New()
	a, b := reg.Locker("job"), reg.Locker("job")
	ctx := context.Background()
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if !reg.Revoke("job") {
		t.Fatal("Revoke = false, want true")
	}
	if reg.Revoke("job") {
		t.Fatal("second Revoke = true, want false: the hold is already lost")
	}
	<-a.Lost()
	if err := a.Err(); !errors.Is(err, locker.ErrLost) || !errors.Is(err, memory.ErrRevoked) {
		t.Fatalf("Err = %v, want ErrLost and ErrRevoked", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Acquire(cctx); err == nil {
		t.Fatal("b acquired a revoked but unreleased name")
	}
	res := make(chan error, 1)
	go func() { res <- b.Acquire(ctx) }()
	select {
	case err := <-res:
		t.Fatalf("b.Acquire returned %v before the revoked holder released", err)
	default:
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("b.Acquire after release = %v", err)
	}
	if err := a.Err(); !errors.Is(err, locker.ErrLost) {
		t.Fatalf("Err after Release of a lost hold = %v, want it to still say the hold was lost", err)
	}
	_ = b.Release(ctx)
}

func TestTerminateFreesNameAtOnce(t *testing.T) {
	reg := memory.New()
	a, b := reg.Locker("job"), reg.Locker("job")
	ctx := context.Background()
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if !reg.Terminate("job") {
		t.Fatal("Terminate = false, want true")
	}
	<-a.Lost()
	if err := b.Acquire(ctx); err != nil {
		t.Fatalf("b.Acquire after Terminate = %v, want nil", err)
	}
	// The old holder's Release must not free b's hold.
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Lost():
		t.Fatal("the terminated holder's Release ended the new holder's hold")
	default:
	}
	_ = b.Release(ctx)
}

func TestEmptyNamePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Locker(\"\") did not panic")
		}
	}()
	memory.New().Locker("")
}

func ExampleRegistry_Revoke() {
	reg := memory.New()
	l := reg.Locker("nightly-billing")
	ctx := context.Background()
	if err := l.Acquire(ctx); err != nil {
		panic(err)
	}
	reg.Revoke("nightly-billing")
	<-l.Lost()
	fmt.Println(errors.Is(l.Err(), locker.ErrLost))
	_ = l.Release(ctx)
	// Output: true
}

func TestHolderAndIdentity(t *testing.T) {
	reg := memory.New()
	ctx := context.Background()
	a := reg.Locker("job", memory.WithIdentity("node-a"))
	b := reg.Locker("job")
	if id, ok := locker.Identity(b); !ok || !strings.HasPrefix(id, "memory-") {
		t.Fatalf("default identity = %q, %v", id, ok)
	}
	if who, ok, err := locker.Holder(ctx, b); !ok || who != "" || err != nil {
		t.Fatalf("Holder of a free name = %q, %v, %v", who, ok, err)
	}
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if who, _, _ := locker.Holder(ctx, b); who != "node-a" {
		t.Fatalf("Holder = %q, want node-a", who)
	}
	reg.Revoke("job")
	if who, _, _ := locker.Holder(ctx, b); who != "node-a" {
		t.Fatalf("Holder after Revoke, before Release = %q, want node-a: the name is still taken", who)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if who, _, _ := locker.Holder(ctx, b); who != "" {
		t.Fatalf("Holder after Release = %q", who)
	}
}

func TestBadNamesRefused(t *testing.T) {
	reg := memory.New()
	for _, name := range []string{" ", "\t\n", "job\n", "a\x00b", "x\x7f"} {
		err := reg.Locker(name).Acquire(context.Background())
		if !errors.Is(err, locker.ErrConfig) {
			t.Errorf("Acquire with name %q = %v, want ErrConfig", name, err)
		}
	}
	if err := reg.Locker("nightly billing ✓").Acquire(context.Background()); err != nil {
		t.Errorf("a name with inner spaces and non-ASCII letters: %v", err)
	}
}
