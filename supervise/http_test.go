package supervise_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// body is what a StatusHandler serves.
type body struct {
	State        string     `json:"state"`
	Since        time.Time  `json:"since"`
	Leading      bool       `json:"leading"`
	Healthy      bool       `json:"healthy"`
	Unhealthy    string     `json:"unhealthy"`
	Identity     string     `json:"identity"`
	Holder       string     `json:"holder"`
	Restarts     int        `json:"restarts"`
	LastError    string     `json:"last_error"`
	VouchedUntil *time.Time `json:"vouched_until"`
}

func get(t *testing.T, url string) (int, body) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b body
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	return resp.StatusCode, b
}

// Two replicas on a real PostgreSQL lock: the leader answers 200, the
// other 429, and both name the same holder.
func TestStatusHandlerTwoReplicas(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string, db *sql.DB) {
		name := "status-" + driver + "-" + time.Now().Format("150405.000000")
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		urls := make([]string, 2)
		evs := []*events{newEvents(), newEvents()}
		for i, id := range []string{"node-a", "node-b"} {
			l, err := postgres.New(db, name, postgres.WithIdentity(id))
			if err != nil {
				t.Fatal(err)
			}
			s := &supervise.Supervisor{OnEvent: evs[i].hook}
			hs := httptest.NewServer(&supervise.StatusHandler{Supervisor: s})
			defer hs.Close()
			urls[i] = hs.URL
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.Run(ctx, l, func(ctx context.Context) error { <-ctx.Done(); return nil }); err != nil {
					t.Errorf("%s: Run = %v", id, err)
				}
			}()
			if i == 0 {
				// node-a leads before node-b starts to wait.
				evs[0].waitFor(t, supervise.EventAcquired, 1)
			}
		}
		if w := evs[1].waitFor(t, supervise.EventWaiting, 1); w.Holder != "node-a" {
			t.Fatalf("node-b's EventWaiting.Holder = %q, want node-a", w.Holder)
		}
		codeA, a := get(t, urls[0])
		codeB, b := get(t, urls[1])
		t.Logf("node-a: %d %+v", codeA, a)
		t.Logf("node-b: %d %+v", codeB, b)
		if codeA != http.StatusOK || !a.Leading || a.State != "leading" || a.Identity != "node-a" || !a.Healthy {
			t.Errorf("leader: %d %+v", codeA, a)
		}
		if codeB != http.StatusTooManyRequests || b.Leading || b.State != "waiting" || b.Identity != "node-b" || !b.Healthy {
			t.Errorf("standby: %d %+v", codeB, b)
		}
		if a.Holder != "node-a" || b.Holder != a.Holder {
			t.Errorf("holders %q and %q, want node-a twice", a.Holder, b.Holder)
		}
		if h, err := postgres.WhoHolds(context.Background(), db, name); err != nil || h == nil || h.ApplicationName != a.Holder {
			t.Errorf("WhoHolds = %+v, %v; the status says %q", h, err, a.Holder)
		}
	})
}

// vouched is a memory Locker that is a locker.Voucher with a settable
// deadline, as if its heartbeat stopped.
type vouched struct {
	*memory.Locker
	mu    sync.Mutex
	until time.Time
}

func (v *vouched) VouchedUntil() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.until
}

func (v *vouched) set(t time.Time) {
	v.mu.Lock()
	v.until = t
	v.mu.Unlock()
}

// Health follows client-go's HealthzAdaptor: unhealthy only while leading
// without the hold vouched for longer than the tolerance.
func TestCheckAndLiveness(t *testing.T) {
	reg := memory.New()
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	l := &vouched{Locker: reg.Locker("job", memory.WithIdentity("me"))}
	l.set(now.Add(3 * time.Second))
	ev := newEvents()
	s := &supervise.Supervisor{OnEvent: ev.hook, Stuck: supervise.LogOnly}
	s.SetExit(func(int) { t.Error("terminated") })
	s.SetClock(clock, time.After)
	status := httptest.NewServer(&supervise.StatusHandler{Supervisor: s, Tolerance: time.Second, StandbyCode: http.StatusServiceUnavailable})
	defer status.Close()
	live := httptest.NewServer(&supervise.LivenessHandler{Supervisor: s, Tolerance: time.Second})
	defer live.Close()
	liveness := func() (int, string) {
		resp, err := http.Get(live.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}

	// Before Run: idle, not leading, healthy.
	if code, b := get(t, status.URL); code != http.StatusServiceUnavailable || b.State != "idle" || !b.Healthy {
		t.Fatalf("idle: %d %+v", code, b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		res <- s.Run(ctx, l, func(ctx context.Context) error {
			<-ctx.Done()
			<-stop // slow to stop, to see Stopping
			return nil
		})
	}()
	ev.waitFor(t, supervise.EventAcquired, 1)
	code, b := get(t, status.URL)
	if code != http.StatusOK || !b.Healthy || b.VouchedUntil == nil || !b.VouchedUntil.Equal(now.Add(3*time.Second)) || b.Holder != "me" {
		t.Fatalf("leading and vouched for: %d %+v", code, b)
	}
	advance(3*time.Second + time.Second) // exactly the tolerance past: still healthy
	if err := s.Check(time.Second); err != nil {
		t.Fatalf("Check at the tolerance = %v", err)
	}
	advance(time.Millisecond)
	if err := s.Check(time.Second); err == nil {
		t.Fatal("Check past the tolerance = nil")
	}
	if code, b := get(t, status.URL); code != http.StatusServiceUnavailable || b.Healthy || !b.Leading || b.Unhealthy == "" {
		t.Fatalf("leading, not vouched for: %d %+v", code, b)
	}
	if code, msg := liveness(); code != http.StatusServiceUnavailable || !strings.Contains(msg, "vouched") {
		t.Fatalf("liveness: %d %q", code, msg)
	}
	l.set(now.Add(time.Second)) // a heartbeat again
	if code, msg := liveness(); code != http.StatusOK || msg != "ok" {
		t.Fatalf("liveness after a heartbeat: %d %q", code, msg)
	}

	// Told to stop, the child hangs past ShutdownTimeout + tolerance.
	cancel()
	ev.waitFor(t, supervise.EventStopping, 1)
	advance(supervise.DefaultShutdownTimeout + 2*time.Second)
	if err := s.Check(time.Second); err == nil || !strings.Contains(err.Error(), "still runs") {
		t.Fatalf("Check with a child stuck in Stopping = %v", err)
	}
	close(stop)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	if code, b := get(t, status.URL); code != http.StatusServiceUnavailable || b.State != "stopped" || !b.Healthy || b.Holder != "" {
		t.Fatalf("stopped: %d %+v", code, b)
	}
}
