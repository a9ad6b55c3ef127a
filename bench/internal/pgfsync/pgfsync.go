// Package pgfsync makes the PostgreSQL servers internal/pglocal starts
// run with fsync on, for the benchmarks.
package pgfsync

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
)

// On makes the PostgreSQL servers that internal/pglocal starts from
// now on run with fsync on, as in production: the fencing token's WAL
// flush is on the takeover path, and costs more when it really reaches the
// disk. pglocal turns fsync off (right for tests, which only need speed);
// it finds its binaries through PATH, so a directory put first on PATH
// with an initdb and a postgres that run the real ones, the latter with
// "-c fsync=on" after pglocal's settings (the last setting wins), changes
// that and nothing else. The returned func removes the directory.
func On() (func(), error) {
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "onlyone-bench-bin-")
	if err != nil {
		return nil, err
	}
	// The server runs as the postgres user when we are root: it must be
	// able to run the wrapper.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	scripts := map[string]string{
		"initdb":   fmt.Sprintf("#!/bin/sh\nexec %q \"$@\"\n", filepath.Join(bin, "initdb")),
		"postgres": fmt.Sprintf("#!/bin/sh\nexec %q \"$@\" -c fsync=on\n", filepath.Join(bin, "postgres")),
	}
	for name, script := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return func() { os.RemoveAll(dir) }, nil
}

// postgresBinDir finds the directory of the real initdb and postgres, as
// pglocal does: initdb on PATH, else the newest /usr/lib/postgresql/*/bin.
func postgresBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs) // good enough for one installed version; pglocal sorts numerically
	if len(dirs) == 0 {
		return "", errors.New("no PostgreSQL binaries found for a server with fsync on")
	}
	return dirs[len(dirs)-1], nil
}
