package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) {
	if id := os.Getenv(nodeEnv); id != "" {
		os.Exit(node(id, os.Getenv("DATABASE_URL")))
	}
	goleak.VerifyTestMain(m)
}

// TestDemo runs the demo as make demo does, and checks that it tells the
// whole story and leaves no server directory or node process behind.
func TestDemo(t *testing.T) {
	t.Setenv("DATABASE_URL", "") // the no-configuration path
	// Only this process's server directories: other test binaries run at once.
	mine := filepath.Join(os.TempDir(), "onlyone-pglocal-"+strconv.Itoa(os.Getpid())+"-*")
	before, _ := filepath.Glob(mine)
	var out bytes.Buffer
	if code := demo(&out); code != 0 {
		t.Fatalf("demo exited %d:\n%s", code, out.String())
	}
	t.Log("\n" + out.String())
	want := []string{"takeover", "hand-over", "Done."}
	if os.Getenv(pglocal.EnvRequire) == "1" {
		want = append(want, "throwaway PostgreSQL", "SIGKILL", "onlyone status says", "postgres.Session", "connections per node for all of them: 2, 2, 2", "run elsewhere", "passed on")
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("the demo did not say %q", w)
		}
	}
	after, _ := filepath.Glob(mine)
	if len(after) > len(before) {
		t.Errorf("the demo left server directories behind: %v (before: %v)", after, before)
	}
	if left := children(); len(left) > 0 {
		t.Errorf("the demo left processes behind: %v", left)
	}
}

// children lists the live (not zombie) child processes of this process.
func children() []string {
	self := strconv.Itoa(os.Getpid())
	entries, _ := os.ReadDir("/proc")
	var kids []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state, ppid, ...
		if len(f) > 1 && f[0] != "Z" && f[1] == self {
			kids = append(kids, s[:i+1])
		}
	}
	return kids
}

func TestMemoryDemo(t *testing.T) {
	var out bytes.Buffer
	if code := memoryDemo(&out); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out.String())
	}
	for _, w := range []string{"takeover", "hand-over", "Done."} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("the in-memory demo did not say %q:\n%s", w, out.String())
		}
	}
}
