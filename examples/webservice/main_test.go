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
			// The supervisor's own status agrees: 200 on the leader,
			// 429 on the other, both naming the same holder.
			// (A waiter that found the lock free when its wait began
			// names the holder a moment later: poll again until then.)
			codes, agree := map[int]int{}, true
			for _, addr := range addrs {
				code, holder := leaderStatus(t, addr)
				codes[code]++
				agree = agree && holder == a.Leader
			}
			if agree && codes[http.StatusOK] == 1 && codes[http.StatusTooManyRequests] == 1 {
				t.Logf("%+v %+v; /leader codes %v", a, b, codes)
				return
			}
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

// leaderStatus returns the code of GET /leader and the holder it names.
func leaderStatus(t *testing.T, addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/leader")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b struct{ Holder string }
	_ = json.NewDecoder(resp.Body).Decode(&b)
	return resp.StatusCode, b.Holder
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
