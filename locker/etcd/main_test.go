package etcd_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
)

// The tests run against a real etcd server, embedded in a child process of
// their own (this test binary, run again): its goroutines do not mix with
// those the leak checks look at, and a test can kill it.

const serveEnv = "ONLYONE_ETCD_TEST_SERVE" // dir,clientURL,peerURL

// endpoint is the client address of the server that TestMain starts.
var endpoint string

// withEtcd runs the tests between starting and stopping the server, so that
// goleak looks for leaks once the tests' clients are closed.
type withEtcd struct{ m *testing.M }

func (w withEtcd) Run() int {
	srv, err := startEtcd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd tests:", err)
		return 1
	}
	defer srv.stop()
	endpoint = srv.endpoint
	return w.m.Run()
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		os.Exit(serve(spec))
	}
	goleak.VerifyTestMain(withEtcd{m})
}

// An etcdServer is a child process serving etcd on loopback.
type etcdServer struct {
	endpoint string
	cmd      *exec.Cmd
	stdin    io.Closer
	dir      string
}

// startEtcd starts a single-member etcd in a child process and waits until
// it serves.
func startEtcd() (*etcdServer, error) {
	dir, err := os.MkdirTemp("", "onlyone-etcd-test-")
	if err != nil {
		return nil, err
	}
	client, peer := freeURL(), freeURL()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveEnv+"="+strings.Join([]string{dir, client.String(), peer.String()}, ","))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &etcdServer{endpoint: client.Host, cmd: cmd, stdin: stdin, dir: dir}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if sc.Text() == "ready" {
				ok = true
				break
			}
		}
		ready <- ok
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if ok {
			return s, nil
		}
	case <-time.After(60 * time.Second):
	}
	s.stop()
	return nil, fmt.Errorf("etcd did not start within 60s")
}

// stop ends the server (closing its stdin, which it takes as the signal)
// and removes its data.
func (s *etcdServer) stop() {
	s.stdin.Close()
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(s.dir)
}

// serve runs the embedded etcd of a child process until stdin closes.
func serve(spec string) int {
	parts := strings.Split(spec, ",")
	client, err1 := url.Parse(parts[1])
	peer, err2 := url.Parse(parts[2])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "bad", serveEnv)
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Dir = parts[0]
	cfg.LogLevel = "error"
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-e.Server.ReadyNotify()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it or dies
	e.Close()
	return 0
}

func freeURL() url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}
