package supervise

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// DefaultTolerance is how long, by default, a leading supervisor may go
// without its hold being vouched for before Check calls it unhealthy.
const DefaultTolerance = 5 * time.Second

// Check reports whether s is healthy, in the spirit of client-go's
// HealthzAdaptor: it returns an error only while s acts as the holder
// (Leading, or Stopping with the child still running) although the hold
// has not been vouched for, for longer than tolerance — the process is
// then too stuck to notice its own loss. The hold is vouched for until
// locker.VouchedUntil, for a Locker that is a locker.Voucher; a child
// told to stop is expected to have stopped after ShutdownTimeout. Waiting,
// idle and stopped supervisors are healthy. tolerance ≤ 0 means
// DefaultTolerance.
func (s *Supervisor) Check(tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	s.mu.Lock()
	st, l, shutdown := s.status, s.locker, s.shutdown
	s.mu.Unlock()
	now := s.clock()
	switch st.State {
	case Leading:
		until, ok := locker.VouchedUntil(l)
		if !ok {
			return nil
		}
		if until.IsZero() || until.Before(st.Since) {
			// Not held, yet Leading: not vouched for since it began.
			until = st.Since
		}
		if late := now.Sub(until); late > tolerance {
			return fmt.Errorf("supervise: leading, but the hold has not been vouched for since %v (%v ago)", until.Format(time.RFC3339Nano), late.Round(time.Millisecond))
		}
	case Stopping:
		if late := now.Sub(st.Since) - shutdown; late > tolerance {
			return fmt.Errorf("supervise: the child was told to stop %v ago and still runs (ShutdownTimeout %v)", now.Sub(st.Since).Round(time.Millisecond), shutdown)
		}
	}
	return nil
}

// A StatusHandler serves a Supervisor's status as JSON, for people and
// for load balancers, in the manner of Vault's health endpoint: 200 while
// the supervisor leads, StandbyCode while it does not, and UnhealthyCode
// while it leads but Check fails. A body looks like
//
//	{"state":"waiting","since":"2026-11-21T18:05:00Z","leading":false,
//	 "healthy":true,"identity":"node-b","holder":"node-a","restarts":0}
//
// with "last_error" when there was one and "vouched_until" while a
// locker.Voucher holds the lock. "holder" is who holds the lock as far as
// the supervisor knows (see Status.Holder). Any method is answered; HEAD
// gets no body. Its zero value other than Supervisor is ready to use.
type StatusHandler struct {
	Supervisor *Supervisor

	// StandbyCode is the status code while the supervisor does not lead.
	// Zero means 429 (Too Many Requests), as Vault answers on a standby.
	StandbyCode int

	// UnhealthyCode is the status code while the supervisor leads but is
	// not healthy (see Supervisor.Check). Zero means 503.
	UnhealthyCode int

	// Tolerance is passed to Supervisor.Check; zero means
	// DefaultTolerance.
	Tolerance time.Duration
}

// statusBody is what a StatusHandler serves.
type statusBody struct {
	State        string     `json:"state"`
	Since        time.Time  `json:"since"`
	Leading      bool       `json:"leading"`
	Healthy      bool       `json:"healthy"`
	Unhealthy    string     `json:"unhealthy,omitempty"`
	Identity     string     `json:"identity,omitempty"`
	Holder       string     `json:"holder,omitempty"`
	Restarts     int        `json:"restarts"`
	LastError    string     `json:"last_error,omitempty"`
	VouchedUntil *time.Time `json:"vouched_until,omitempty"`
}

// ServeHTTP writes the status.
func (h *StatusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.Supervisor
	st := s.Status()
	b := statusBody{
		State: st.State.String(), Since: st.Since, Leading: st.State == Leading,
		Identity: st.Identity, Holder: st.Holder, Restarts: st.Restarts,
	}
	if st.LastError != nil {
		b.LastError = st.LastError.Error()
	}
	if b.Leading {
		s.mu.Lock()
		l := s.locker
		s.mu.Unlock()
		if until, ok := locker.VouchedUntil(l); ok && !until.IsZero() {
			b.VouchedUntil = &until
		}
	}
	err := s.Check(h.Tolerance)
	b.Healthy = err == nil
	if err != nil {
		b.Unhealthy = err.Error()
	}
	code := http.StatusOK
	switch {
	case b.Leading && !b.Healthy:
		code = or(h.UnhealthyCode, http.StatusServiceUnavailable)
	case !b.Leading:
		code = or(h.StandbyCode, http.StatusTooManyRequests)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_ = json.NewEncoder(w).Encode(b)
	}
}

// A LivenessHandler answers 200 "ok" while Supervisor.Check passes and 503
// with the reason when it fails, for a liveness probe that restarts a
// process too stuck to give up a lock it no longer holds. Unlike
// StatusHandler, it answers 200 on a standby.
type LivenessHandler struct {
	Supervisor *Supervisor
	Tolerance  time.Duration // passed to Supervisor.Check
}

// ServeHTTP writes "ok" or the reason for failing.
func (h *LivenessHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := h.Supervisor.Check(h.Tolerance); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = fmt.Fprintln(w, "ok")
}

func or(code, def int) int {
	if code == 0 {
		return def
	}
	return code
}
