package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// databaseURL returns the database URL: --database-url, else the file
// named by --database-url-file, else DATABASE_URL. An empty URL with
// libpq's PGHOST or PGSERVICE set is allowed: the driver reads PG*
// variables and the password file (PGPASSFILE, ~/.pgpass) itself. warn
// is a warning to show: a password in argv.
func databaseURL(flagURL, file string) (u, warn string, err error) {
	switch {
	case flagURL != "" && file != "":
		return "", "", errors.New("give --database-url or --database-url-file, not both")
	case flagURL != "":
		if hasPassword(flagURL) {
			warn = "the password in --database-url can be read by any local user (ps, /proc); use --database-url-file, DATABASE_URL or a password file (PGPASSFILE)"
		}
		return flagURL, warn, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", fmt.Errorf("--database-url-file: %w", err)
		}
		if u := strings.TrimSpace(string(b)); u != "" {
			return u, "", nil
		}
		return "", "", fmt.Errorf("--database-url-file %s is empty", file)
	case os.Getenv("DATABASE_URL") != "":
		return os.Getenv("DATABASE_URL"), "", nil
	case os.Getenv("PGHOST") != "" || os.Getenv("PGSERVICE") != "":
		return "", "", nil
	}
	return "", "", errors.New("no database: set --database-url, --database-url-file or DATABASE_URL")
}

// hasPassword reports whether a URL or keyword/value string has a password.
func hasPassword(dsn string) bool {
	return stripPassword(dsn) != dsn
}

// stripPassword returns dsn without its password, or "" if it cannot be
// parsed well enough to be sure.
func stripPassword(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return ""
		}
		if u.User != nil {
			if _, ok := u.User.Password(); ok {
				u.User = url.User(u.User.Username())
			}
		}
		q := u.Query()
		if q.Has("password") {
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	if strings.Contains(dsn, "://") {
		return ""
	}
	return strings.TrimSpace(keywordPassword.ReplaceAllString(dsn, ""))
}

// commandEnv is the environment of the command: onlyone's own, without
// the database password (DATABASE_URL keeps everything else, PGPASSWORD
// goes), plus the lock's variables.
func commandEnv(environ []string, extra ...string) []string {
	var env []string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "PGPASSWORD":
			continue
		case "DATABASE_URL":
			if v = stripPassword(v); v == "" {
				continue
			}
			kv = k + "=" + v
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}
