package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

// role makes a role that must log in with a password and has no
// privileges, as an application's role on managed PostgreSQL. It returns
// its name and password.
func role(t *testing.T, srv *pglocal.Server) (name, password string) {
	t.Helper()
	db := openAdmin(t, srv.URL)
	id := strings.ToLower(uniqueName(t))
	name, password = "onlyone_cli_"+id[len(id)-8:], "S3cret-"+id[len(id)-8:]
	if _, err := db.Exec("CREATE ROLE " + name + " LOGIN PASSWORD '" + password + "' NOSUPERUSER IN ROLE onlyone_password"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = openAdmin(t, srv.URL).Exec("DROP ROLE " + name) })
	return name, password
}

func TestNoPasswordInTheCommandsEnvironment(t *testing.T) {
	srv := pglocal.Shared(t)
	user, password := role(t, srv)
	withPassword := srv.URLWith(user, password, "")
	file := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(file, []byte(withPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(srv.Addr(), ":")
	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte(host+":"+port+":*:"+user+":"+password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what string
		env  []string
		args []string
	}{
		{"DATABASE_URL", []string{"DATABASE_URL=" + withPassword}, nil},
		{"--database-url", nil, []string{"--database-url", withPassword}},
		{"--database-url-file", nil, []string{"--database-url-file", file}},
		{"PGPASSWORD", []string{"DATABASE_URL=" + srv.URLWith(user, "", ""), "PGPASSWORD=" + password}, nil},
		{"PGPASSFILE", []string{"DATABASE_URL=" + srv.URLWith(user, "", ""), "PGPASSFILE=" + passfile}, nil},
		{"PGHOST", []string{"DATABASE_URL=", "PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + user, "PGPASSWORD=" + password, "PGDATABASE=postgres", "PGSSLMODE=disable"}, nil},
	} {
		t.Run(tc.what, func(t *testing.T) {
			args := append(append([]string{"run", "--name", uniqueName(t)}, tc.args...), "--", "sh", "-c", `env; cat /proc/$PPID/environ /proc/$PPID/cmdline | tr '\0' '\n'`)
			w := start(t, srv.URL, tc.env, args...)
			if code := w.wait(t); code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, w.stderr.String())
			}
			out := w.stdout.String()
			if !strings.Contains(out, "ONLYONE_NAME=") {
				t.Fatalf("the command's environment was not printed:\n%s", out)
			}
			if strings.Contains(out, password) {
				t.Fatalf("the command's (or its watchdog's) environment or argv holds the password:\n%s", out)
			}
			if strings.Contains(w.stderr.String(), password) {
				t.Fatalf("stderr holds the password:\n%s", w.stderr.String())
			}
			if tc.what == "--database-url" && !strings.Contains(w.stderr.String(), "can be read by any local user") {
				t.Errorf("no warning about the password in argv; stderr:\n%s", w.stderr.String())
			}
			if tc.what == "DATABASE_URL" {
				want := "DATABASE_URL=" + srv.URLWith(user, "", "")
				if u, _ := url.Parse(srv.URLWith(user, "", "")); u != nil && !strings.Contains(out, want) {
					t.Errorf("DATABASE_URL without its password (%s) is not in the command's environment:\n%s", want, out)
				}
			}
		})
	}
}

// The README's cron example: three nodes started 0, 1.5 and 3 s apart,
// a job of 2 s, --at-most-every 1m: it runs once; all exit 0.
func TestAtMostEveryRunsOnceAcrossSkewedNodes(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	var ws []*wrapper
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(1500 * time.Millisecond) // the nodes' skew: the scenario, not synchronisation
		}
		ws = append(ws, start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--at-most-every", "1m", "--",
			"sh", "-c", `echo "$ONLYONE_IDENTITY" >> "$D/runs"; sleep 2`))
	}
	skipped := 0
	for i, w := range ws {
		if code := w.wait(t); code != 0 {
			t.Errorf("node %d exited %d; stderr:\n%s", i, code, w.stderr.String())
		}
		if strings.Contains(w.stderr.String(), "not running it again") {
			skipped++
		}
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	if n := strings.Count(string(runs), "\n"); n != 1 || skipped != 2 {
		t.Fatalf("the job ran %d times (%q) and %d nodes said they skipped it; want 1 and 2", n, runs, skipped)
	}
}

func TestNoWait(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	a := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--identity", "node-a", "--", "sh", "-c", `touch "$D/a"; exec sleep 300`)
	poll(t, "a's command starts", func() bool { return exists(filepath.Join(dir, "a")) })
	b := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--no-wait", "--", "touch", filepath.Join(dir, "b"))
	if code := b.wait(t); code != exitBusy || exists(filepath.Join(dir, "b")) || !strings.Contains(b.stderr.String(), "node-a") {
		t.Fatalf("--no-wait while node-a holds the lock: exit %d, ran %v, stderr %q; want %d, not run, naming node-a",
			code, exists(filepath.Join(dir, "b")), b.stderr.String(), exitBusy)
	}
	a.signal(t, syscall.SIGTERM)
	a.wait(t)
	c := start(t, srv.URL, nil, "run", "--name", name, "--no-wait", "--", "touch", filepath.Join(dir, "c"))
	if code := c.wait(t); code != 0 || !exists(filepath.Join(dir, "c")) {
		t.Fatalf("--no-wait on a free lock: exit %d; stderr:\n%s", code, c.stderr.String())
	}
}

// status --json, as a role with no privileges that is not the holder's,
// names the holder; exit 0 when held, 3 when free.
func TestStatusJSONAsAnUnprivilegedRole(t *testing.T) {
	srv := pglocal.Shared(t)
	holder, hp := role(t, srv)
	asker, ap := role(t, srv)
	dir, name := t.TempDir(), uniqueName(t)
	status := func() (statusJSON, int) {
		t.Helper()
		st := start(t, srv.URLWith(asker, ap, ""), nil, "status", "--name", name, "--json")
		code := st.wait(t)
		var s statusJSON
		if err := json.Unmarshal([]byte(st.stdout.String()), &s); err != nil {
			t.Fatalf("status --json printed %q (%v); stderr:\n%s", st.stdout.String(), err, st.stderr.String())
		}
		return s, code
	}
	if s, code := status(); code != exitFree || s.Held || s.Holder != nil {
		t.Fatalf("status of a free lock: %+v, exit %d; want free, exit %d", s, code, exitFree)
	}
	w := start(t, srv.URLWith(holder, hp, ""), []string{"D=" + dir}, "run", "--name", name, "--identity", "node-q", "--",
		"sh", "-c", `touch "$D/started"; exec sleep 300`)
	poll(t, "the command starts", func() bool { return exists(filepath.Join(dir, "started")) })
	s, code := status()
	if code != 0 || !s.Held || s.Holder == nil || s.Holder.Identity != "node-q" || s.Holder.Role != holder || s.Holder.PID == 0 {
		t.Fatalf("status of a held lock as another unprivileged role: %+v (holder %+v), exit %d", s, s.Holder, code)
	}
	w.signal(t, syscall.SIGTERM)
	w.wait(t)
}

// With --restart, a database that cannot be reached at start is retried,
// loudly, until it can.
func TestRestartRetriesAnUnreachableDatabase(t *testing.T) {
	srv := pglocal.Shared(t)
	proxy, err := faultproxy.Start(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	proxy.Drop()
	dir := t.TempDir()
	u := srv.URLVia(proxy.Addr()) + "&connect_timeout=1"
	w := start(t, u, []string{"D=" + dir}, "run", "--name", uniqueName(t), "--restart", "permanent", "--", "sh", "-c", `touch "$D/started"; exec sleep 300`)
	poll(t, "onlyone says it retries", func() bool { return strings.Contains(w.stderr.String(), "retrying") })
	proxy.Restore()
	poll(t, "the command starts once the database answers", func() bool { return exists(filepath.Join(dir, "started")) })
	w.signal(t, syscall.SIGTERM)
	if code := w.wait(t); code != 143 {
		t.Fatalf("exit %d, want 143; stderr:\n%s", code, w.stderr.String())
	}
}

// A normal stop logs no warning and no err=<nil>; lock names are unquoted.
func TestLogsOfANormalRun(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	w := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--", "sh", "-c", `touch "$D/started"; exec sleep 300`)
	poll(t, "the command starts", func() bool { return exists(filepath.Join(dir, "started")) })
	w.signal(t, syscall.SIGTERM)
	w.wait(t)
	logs := w.stderr.String()
	t.Logf("logs:\n%s", logs)
	for _, bad := range []string{"level=WARN", "level=ERROR", "err=<nil>", `lock="\"`} {
		if strings.Contains(logs, bad) {
			t.Errorf("the logs of a normal run and stop hold %q:\n%s", bad, logs)
		}
	}
	if !strings.Contains(logs, "lock="+name) {
		t.Errorf("the logs do not name the lock unquoted (lock=%s):\n%s", name, logs)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := cli(context.Background(), []string{"version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "onlyone ") {
		t.Fatalf("onlyone version: exit %d, %q", code, out.String())
	}
}

// A waiter says once that it waits, and for whom, however many wait
// chunks pass.
func TestWaiterSaysWhomItWaitsForOnce(t *testing.T) {
	srv := pglocal.Shared(t)
	dir, name := t.TempDir(), uniqueName(t)
	a := start(t, srv.URL, []string{"D=" + dir}, "run", "--name", name, "--identity", "node-a", "--", "sh", "-c", `touch "$D/a"; sleep 2.5`)
	poll(t, "a's command starts", func() bool { return exists(filepath.Join(dir, "a")) })
	b := start(t, srv.URL, nil, "run", "--name", name, "--", "true")
	if code := b.wait(t); code != 0 {
		t.Fatalf("b exited %d; stderr:\n%s", code, b.stderr.String())
	}
	a.wait(t)
	logs := b.stderr.String()
	if n := strings.Count(logs, `msg="supervise: waiting"`); n != 1 || !strings.Contains(logs, "holder=node-a") {
		t.Fatalf("the waiter logged %d waiting lines, want 1 naming node-a:\n%s", n, logs)
	}
}
