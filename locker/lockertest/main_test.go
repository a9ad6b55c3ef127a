package lockertest_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("LOCKERTEST_BROKEN") != "" {
		os.Exit(m.Run()) // a child running a broken backend leaks on purpose
	}
	goleak.VerifyTestMain(m)
}
