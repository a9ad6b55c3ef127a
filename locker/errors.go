package locker

import "errors"

// Sentinel errors, matched with errors.Is. Backends wrap them with detail.
var (
	// ErrNotHeld is what Err reports before the first Acquire and after
	// Release: the Locker does not hold the lock and was not asked to.
	ErrNotHeld = errors.New("locker: lock not held")

	// ErrHeld is returned by Acquire on a Locker that already holds the lock.
	ErrHeld = errors.New("locker: lock already held by this locker")

	// ErrLost is matched by the error Err reports after a held lock was
	// lost: taken away, its session ended, or no longer vouched for by the
	// backend (a missed heartbeat).
	ErrLost = errors.New("locker: lock lost")

	// ErrHandedOver is matched, beside ErrLost, by the error Err reports
	// when the backend gave a held lock up on purpose, not because of a
	// fault: to spread many locks evenly over the nodes that want them,
	// say. The work stops as on any loss and another node takes it over;
	// a supervisor logs it as routine, not as an error.
	ErrHandedOver = errors.New("locker: lock handed over")

	// ErrStandby is returned by Acquire when the backend is a standby or
	// read-only server, where a lock would not exclude holders on the
	// primary.
	ErrStandby = errors.New("locker: server is a standby or read-only")

	// ErrConfig is matched by errors that report a setting which cannot
	// work: an empty name, a non-positive duration, timeouts that break the
	// backend's safety bound. Acquire returns an error matching it, too,
	// for a failure that retrying cannot cure until someone changes the
	// configuration (for a database backend: a database or a role that
	// does not exist); a supervisor stops retrying then. Failures that
	// time may cure (a server down or restarting, a standby, a refused
	// password that may be being rotated) must not match it.
	ErrConfig = errors.New("locker: invalid configuration")
)
