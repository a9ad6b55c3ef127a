package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
)

// withFsync makes the servers internal/pglocal starts from now on run with
// fsync on, as in production (pglocal turns it off for tests): a directory
// put first on PATH holds an initdb and a postgres that run the real ones,
// the latter with "-c fsync=on" after pglocal's settings (the last setting
// wins). The returned func removes the directory.
//
// TODO(coordinator): bench/cmd/takeover on the chaos branch has the same
// helper; once both are merged, one of them should move to bench/internal.
func withFsync() (func(), error) {
	bin, err := realBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "onlyone-many-bin-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the server may run as postgres
		os.RemoveAll(dir)
		return nil, err
	}
	for name, script := range map[string]string{
		"initdb":   fmt.Sprintf("#!/bin/sh\nexec %q \"$@\"\n", filepath.Join(bin, "initdb")),
		"postgres": fmt.Sprintf("#!/bin/sh\nexec %q \"$@\" -c fsync=on\n", filepath.Join(bin, "postgres")),
	} {
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

// realBinDir finds the real initdb and postgres: initdb on PATH, else the
// last /usr/lib/postgresql/*/bin.
func realBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	if len(dirs) == 0 {
		return "", errors.New("no PostgreSQL binaries found")
	}
	return dirs[len(dirs)-1], nil
}
