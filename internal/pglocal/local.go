package pglocal

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var errNoBinaries = errors.New("pglocal: no PostgreSQL binaries")

// dirPrefix starts the name of every temporary directory, followed by the
// pid of the process that made it, so that a later Start can remove the
// directories of processes that died without cleaning up.
const dirPrefix = "onlyone-pglocal-"

// localServer is a postmaster started from local binaries.
type localServer struct {
	bin  string // directory holding initdb, postgres, pg_basebackup
	dir  string // temporary directory: data/ and server.log
	port int
	cred *syscall.Credential // nil when not root

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// findBinaries returns the directory holding initdb and postgres.
func findBinaries() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dir = filepath.Dir(real)
		}
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errNoBinaries
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// credential returns the postgres user's credential when running as root.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pglocal: running as root needs a postgres user to run the server as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// sweep removes directories left by earlier processes that died.
func sweep() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), dirPrefix)
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(m)
		}
	}
}

func startLocal() (*Server, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	sweep()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	ls := &localServer{bin: bin, dir: dir, cred: cred}
	if err := ls.initdb(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if ls.port, err = freePort(); err == nil {
			err = ls.start()
		}
		if err == nil {
			break
		}
		if attempt == 2 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	return ls.server(), nil
}

// server registers ls for removal on a signal and returns its Server.
func (ls *localServer) server() *Server {
	stopOnSignal(ls)
	return &Server{
		URL:   fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", ls.port),
		Kind:  "local",
		stop:  ls.destroy,
		local: ls,
	}
}

// run runs a PostgreSQL program as the server's user.
func (ls *localServer) run(name string, args ...string) error {
	cmd := exec.Command(filepath.Join(ls.bin, name), args...)
	cmd.Dir = ls.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: ls.cred, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pglocal: %s: %v\n%s", name, err, out)
	}
	return nil
}

func (ls *localServer) chown(path string) error {
	if ls.cred == nil {
		return nil
	}
	return os.Chown(path, int(ls.cred.Uid), int(ls.cred.Gid))
}

func (ls *localServer) initdb() error {
	if err := ls.chown(ls.dir); err != nil {
		return err
	}
	data := filepath.Join(ls.dir, "data")
	if err := ls.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return err
	}
	// Members of onlyone_password must give a password; everyone else is
	// trusted, on loopback only. Replication is for standbys.
	hba := `local all all trust
host all +onlyone_password 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
`
	return os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600)
}

// freePort returns a loopback port that is free now, below the kernel's
// range of ephemeral ports when it can. Restart binds the same port again,
// and while the server is down a port in the ephemeral range can be given
// to any process's outgoing connection: the postmaster then fails to start
// ("Address already in use") and the restart with it.
func freePort() (int, error) {
	if lo := ephemeralLow(); lo > lowestPort+1000 {
		for range 50 {
			p := lowestPort + rand.IntN(lo-lowestPort)
			if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p))); err == nil {
				l.Close()
				return p, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// lowestPort is the lowest port freePort picks, above the well-known and
// most registered services' ports.
const lowestPort = 20000

// ephemeralLow returns the first port of the kernel's ephemeral range, or
// 0 when it cannot tell.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	lo, _ := strconv.Atoi(f[0])
	return lo
}

// start starts the postmaster on ls.dir and waits until it takes queries.
func (ls *localServer) start() error {
	logf, err := os.OpenFile(filepath.Join(ls.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(ls.bin, "postgres"),
		"-D", filepath.Join(ls.dir, "data"),
		"-p", strconv.Itoa(ls.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+ls.dir,
		"-c", "max_connections=400",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "shared_preload_libraries=pg_stat_statements",
		"-c", "log_min_messages=warning",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGQUIT is an immediate shutdown: the server goes with the process
	// that started it, however that process ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: ls.cred, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pglocal: starting postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	ls.mu.Lock()
	ls.cmd, ls.exited = cmd, exited
	ls.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", ls.port)
	if err := ping(ctx, dsn, exited); err != nil {
		_ = ls.signal(syscall.SIGQUIT)
		logb, _ := os.ReadFile(filepath.Join(ls.dir, "server.log"))
		return fmt.Errorf("%w\nserver log:\n%s", err, logb)
	}
	return nil
}

// signal sends sig to the postmaster and waits for it to exit.
func (ls *localServer) signal(sig syscall.Signal) error {
	ls.mu.Lock()
	cmd, exited := ls.cmd, ls.exited
	ls.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return errors.New("pglocal: the server did not stop within 30s; killed")
	}
}

func (ls *localServer) destroy() error {
	forget(ls)
	return ls.remove()
}

// remove stops the server and removes its directory.
func (ls *localServer) remove() error {
	err := ls.signal(syscall.SIGQUIT)
	if rerr := os.RemoveAll(ls.dir); err == nil {
		err = rerr
	}
	return err
}

// Restart stops the server — immediately (as a crash would: SIGQUIT, no
// checkpoint) or fast (SIGINT) — and starts it again on the same data and
// port. It works on local servers only.
func (s *Server) Restart(immediate bool) error {
	if s.local == nil {
		return fmt.Errorf("pglocal: cannot restart a %s server", s.Kind)
	}
	sig := syscall.SIGINT
	if immediate {
		sig = syscall.SIGQUIT
	}
	if err := s.local.signal(sig); err != nil {
		return err
	}
	return s.local.start()
}

// StartStandby starts a hot standby of s, streaming from it, and returns
// it. Stop it before s. It works on local servers only.
func (s *Server) StartStandby() (*Server, error) {
	if s.local == nil {
		return nil, fmt.Errorf("pglocal: cannot start a standby of a %s server", s.Kind)
	}
	p := s.local
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	sb := &localServer{bin: p.bin, dir: dir, cred: p.cred}
	if err := sb.chown(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	err = sb.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", "postgres",
		"-D", filepath.Join(dir, "data"), "-R", "-X", "stream", "--no-sync")
	if err == nil {
		if sb.port, err = freePort(); err == nil {
			err = sb.start()
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return sb.server(), nil
}

var interrupts struct {
	sync.Mutex
	servers map[*localServer]bool
	quit    chan struct{} // closed when the last server is gone
}

// stopOnSignal removes ls when the process is interrupted (SIGINT, SIGTERM)
// before it could stop ls itself, then exits. The watcher ends when the
// last server is destroyed.
func stopOnSignal(ls *localServer) {
	interrupts.Lock()
	defer interrupts.Unlock()
	if interrupts.servers == nil {
		interrupts.servers = make(map[*localServer]bool)
	}
	interrupts.servers[ls] = true
	if len(interrupts.servers) > 1 {
		return
	}
	quit := make(chan struct{})
	interrupts.quit = quit
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		defer signal.Stop(c)
		select {
		case <-quit:
		case sig := <-c:
			interrupts.Lock()
			for s := range interrupts.servers {
				s.remove()
			}
			fmt.Fprintf(os.Stderr, "pglocal: %v: stopped and removed the PostgreSQL servers\n", sig)
			os.Exit(2)
		}
	}()
}

// forget takes ls off the list of servers to remove on a signal.
func forget(ls *localServer) {
	interrupts.Lock()
	defer interrupts.Unlock()
	if !interrupts.servers[ls] {
		return
	}
	delete(interrupts.servers, ls)
	if len(interrupts.servers) == 0 {
		close(interrupts.quit)
	}
}
