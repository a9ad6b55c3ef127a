package postgres_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/onlyone-go/onlyone/internal/pglocal"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

// BenchmarkAcquireRelease measures one uncontended hold: connect, set up
// the session, lock, then unlock and destroy the connection (the hold's
// first statement, the pg_locks check and the fencing token's WAL flush,
// runs beside them and may be interrupted by the Release).
func BenchmarkAcquireRelease(b *testing.B) {
	srv := pglocal.Shared(b)
	for _, d := range drivers {
		b.Run(d, func(b *testing.B) {
			db, err := srv.Open(d)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			l, err := postgres.New(db, fmt.Sprintf("bench-acquire-%s-%d", d, b.N))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := l.Acquire(ctx); err != nil {
					b.Fatal(err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHeldLock reports what a held lock costs the holding process:
// heap bytes and goroutines per lock, with 100 locks held at once.
func BenchmarkHeldLock(b *testing.B) {
	srv := pglocal.Shared(b)
	const held = 100
	for _, d := range drivers {
		b.Run(d, func(b *testing.B) {
			db, err := srv.Open(d)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				g0 := runtime.NumGoroutine()
				ls := make([]*postgres.Locker, held)
				for j := range ls {
					l, err := postgres.New(db, fmt.Sprintf("bench-held-%s-%d", d, j))
					if err != nil {
						b.Fatal(err)
					}
					if err := l.Acquire(ctx); err != nil {
						b.Fatal(err)
					}
					ls[j] = l
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/held, "heap-B/lock")
				b.ReportMetric(float64(runtime.NumGoroutine()-g0)/held, "goroutines/lock")
				for _, l := range ls {
					if err := l.Release(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
