package postgres

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/onlyone-go/onlyone/locker"
)

// stateError is a driver error with a SQLSTATE, as pgx's and lib/pq's are.
type stateError string

func (e stateError) Error() string    { return "server said " + string(e) }
func (e stateError) SQLState() string { return string(e) }

// The list of permanent errors, one by one, including those a test server
// cannot easily produce (a missing function, a pooler).
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err       error
		permanent bool
	}{
		{stateError("3D000"), true},
		{stateError("28000"), true},
		{stateError("42501"), true},
		{stateError("42883"), true},
		{fmt.Errorf("acquire: %w", ErrBackendChanged), true},
		{stateError("28P01"), false}, // a password being rotated
		{stateError("53300"), false}, // too many connections
		{stateError("57P01"), false}, // admin shutdown
		{stateError("57P03"), false}, // starting up
		{stateError("08006"), false}, // connection failure
		{fmt.Errorf("acquire: %w", locker.ErrStandby), false},
		{errors.New("pq: SSL is not enabled on the server"), false},
		{fmt.Errorf("%w: %w", context.Canceled, stateError("3D000")), false}, // ctx first
	} {
		got := classify(c.err)
		if errors.Is(got, locker.ErrConfig) != c.permanent {
			t.Errorf("classify(%v) matches ErrConfig = %v, want %v", c.err, !c.permanent, c.permanent)
		}
		if !errors.Is(got, c.err) {
			t.Errorf("classify(%v) = %v, which no longer matches the error", c.err, got)
		}
	}
	if classify(nil) != nil {
		t.Error("classify(nil) != nil")
	}
}
