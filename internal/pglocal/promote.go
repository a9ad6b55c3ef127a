package pglocal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Promote makes a standby (see StartStandby) a primary and returns once it
// accepts writes. It does not touch the old primary: a real failover stops
// or fences that one first (see Failover), else two primaries take writes
// and locks at once.
func (s *Server) Promote() error {
	db, err := sql.Open("pgx", s.URL)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var promoted bool
	// pg_promote waits (here up to 60s) until the server has left recovery.
	if err := db.QueryRowContext(ctx, "SELECT pg_catalog.pg_promote(true, 60)").Scan(&promoted); err != nil {
		return fmt.Errorf("pglocal: promote: %w", err)
	}
	if !promoted {
		return errors.New("pglocal: promote: the standby did not leave recovery within 60s")
	}
	return nil
}

// Failover does what an HA tool does when it moves the primary role to a
// standby of s: it shuts s down (a fast shutdown, which ends every session
// and sends every WAL record to the connected standby before the server
// exits, so no committed transaction is lost) and promotes standby. s stays
// stopped; Stop it to remove its files. Clients find the new primary at its
// own address: a stable address in front of both (faultproxy's Retarget)
// plays the part of a managed service's endpoint.
func (s *Server) Failover(standby *Server) error {
	if s.local == nil {
		return fmt.Errorf("pglocal: cannot fail over from a %s server", s.Kind)
	}
	if err := s.local.signal(syscall.SIGINT); err != nil {
		return err
	}
	return standby.Promote()
}
