package supervise

import "time"

// SetExit replaces os.Exit for the Terminate policy.
func (s *Supervisor) SetExit(f func(code int)) { s.exit = f }

// SetClock replaces time.Now and time.After.
func (s *Supervisor) SetClock(now func() time.Time, after func(time.Duration) <-chan time.Time) {
	s.now, s.after = now, after
}
