package postgres_test

import (
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker"
	"github.com/onlyone-go/onlyone/locker/lockertest"
	"github.com/onlyone-go/onlyone/locker/postgres"
)

func TestConformance(t *testing.T) {
	forEachDriver(t, func(t *testing.T, e *env) {
		lockertest.Run(t, lockertest.Backend{
			New: func(t *testing.T, name string) locker.Locker {
				return e.locker(t, name, postgres.WithHeartbeatInterval(100*time.Millisecond),
					postgres.WithLossTimeout(time.Second), postgres.WithGrace(time.Second))
			},
			Break: func(t *testing.T, l locker.Locker) {
				e.terminate(t, l.(*postgres.Locker).Key())
			},
			Contenders: 6,
			Rounds:     10,
		})
	})
}
