package supervise_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// The common case: run a job while this process holds the lock. With the
// PostgreSQL backend the locker would come from postgres.New(db, name).
func ExampleRun() {
	reg := memory.New()
	l := reg.Locker("nightly-billing")
	job := func(ctx context.Context) error {
		fmt.Println("billing run, on this replica only")
		return nil
	}
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	if err := s.Run(context.Background(), l, job); err != nil {
		fmt.Println("error:", err)
	}
	// Output: billing run, on this replica only
}

// A child stops when the lock is lost, and the supervisor reports each
// transition to its hook.
func ExampleSupervisor_OnEvent() {
	reg := memory.New()
	ctx, cancel := context.WithCancel(context.Background())
	s := &supervise.Supervisor{
		OnEvent: func(e supervise.Event) {
			fmt.Println(e.Kind)
			switch e.Kind {
			case supervise.EventAcquired:
				reg.Revoke("relay") // as if the backend lost the lock
			case supervise.EventReleased:
				cancel() // shut down after the first hand-back
			}
		},
	}
	relay := func(ctx context.Context) error {
		<-ctx.Done() // relay messages until told to stop
		return nil
	}
	_ = s.Run(ctx, reg.Locker("relay"), relay)
	fmt.Println(s.Status().State)
	// Output:
	// waiting
	// acquired
	// lost
	// stopping
	// child-exited
	// released
	// waiting
	// stopped
}

// Serve the supervisor's status to a load balancer or a person: 200 on the
// replica that leads, 429 on the others; a liveness probe next to it.
func ExampleStatusHandler() {
	reg := memory.New()
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	mux := http.NewServeMux() // the application's own, served on its port
	mux.Handle("/leader", &supervise.StatusHandler{Supervisor: s})
	mux.Handle("/healthz", &supervise.LivenessHandler{Supervisor: s})

	// What the handler answers before Run, and while Run leads:
	h := &supervise.StatusHandler{Supervisor: s}
	ask := func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/leader", nil))
		var b struct{ State, Holder string }
		_ = json.Unmarshal(w.Body.Bytes(), &b)
		fmt.Printf("%d %s holder=%q\n", w.Code, b.State, b.Holder)
	}
	ask()
	_ = s.Run(context.Background(), reg.Locker("relay", memory.WithIdentity("node-a")), func(ctx context.Context) error {
		ask()
		return nil
	})
	// Output:
	// 429 idle holder=""
	// 200 leading holder="node-a"
}
