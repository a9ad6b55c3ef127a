package postgres

import (
	"context"
	"errors"

	"github.com/onlyone-go/onlyone/locker"
)

// permanentStates are the SQLSTATEs with which Acquire fails the same way
// however often it is retried, until someone changes the configuration:
// the client's, the server's or a role's. Errors with them match
// locker.ErrConfig, so package supervise ends Run with them at once
// instead of retrying forever.
//
// What is left out is on purpose: a wrong password (28P01) may be a
// password being rotated; a standby (locker.ErrStandby) may be promoted;
// too many connections (53300), a server starting or shutting down (57P03,
// 57P01) and every connection failure (class 08, TLS, DNS) pass.
var permanentStates = map[string]string{
	"3D000": "the database does not exist",
	"28000": "the role does not exist, may not log in, or has no pg_hba.conf entry",
	"42501": "the role lacks a privilege the lock needs: CONNECT on the database, or EXECUTE on a function",
	"42883": "a function the lock needs does not exist: not PostgreSQL, or too old",
}

// classify marks an error of Acquire that retrying cannot cure: it then
// matches locker.ErrConfig as well as what it matched before. Errors
// caused by ctx are left as they are.
func classify(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, locker.ErrConfig) {
		return err
	}
	if why, ok := permanentStates[sqlState(err)]; ok {
		return &permanentError{err: err, why: why}
	}
	if errors.Is(err, ErrBackendChanged) {
		return &permanentError{err: err, why: "session locks need a direct or session-mode connection"}
	}
	return err
}

// A permanentError is an error of Acquire that matches locker.ErrConfig.
type permanentError struct {
	err error
	why string
}

func (e *permanentError) Error() string {
	return e.err.Error() + " (" + e.why + "; retrying cannot help)"
}

func (e *permanentError) Unwrap() []error { return []error{e.err, locker.ErrConfig} }
