package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/onlyone-go/onlyone/internal/pglocal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pglocal.Main(m)) }

// Two replicas serve; exactly one leads, and both name it in /status.
func TestTwoReplicasOneLeader(t *testing.T) {
	srv := pglocal.Shared(t)
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	addrs := []string{freeAddr(t), freeAddr(t)}
	done := make(chan error, 2)
	for i, addr := range addrs {
		go func() { done <- serve(ctx, log, addr, []string{"web-1", "web-2"}[i], srv.URL) }()
	}
	defer func() {
		cancel()
		for range addrs {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		a, b := get(addrs[0]), get(addrs[1])
		leaders := 0
		for _, s := range []status{a, b} {
			if s.State == "leading" {
				leaders++
			}
		}
		if leaders == 1 && a.Leader != "" && a.Leader == b.Leader {
			t.Logf("%+v %+v", a, b)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single agreed leader: %+v %+v", a, b)
		}
		time.Sleep(20 * time.Millisecond) // polling an HTTP endpoint: no event to wait on
	}
}

func get(addr string) status {
	var s status
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		return s
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&s)
	return s
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
