package metrics_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }
