// Command webservice is a service whose every replica serves HTTP while one
// of them also runs a leader-only worker. GET /status tells who leads, asking
// PostgreSQL; GET /leader is the supervisor's own status, 200 on the leader
// and 429 elsewhere, for a load balancer that routes to the leader; GET
// /healthz is a liveness probe.
//
//	DATABASE_URL=postgres://... go run ./examples/webservice -addr 127.0.0.1:8081 -id web-1
//	DATABASE_URL=postgres://... go run ./examples/webservice -addr 127.0.0.1:8082 -id web-2
//	curl -s 127.0.0.1:8082/status
//	curl -si 127.0.0.1:8082/leader
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"golang.org/x/sync/errgroup"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

const lockName = "example-outbox-relay"

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "HTTP listen address")
	id := flag.String("id", postgres.DefaultIdentity(), "this replica's identity")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("replica", *id)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, log, *addr, *id, os.Getenv("DATABASE_URL")); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

// status is what GET /status answers.
type status struct {
	Replica   string `json:"replica"`
	State     string `json:"state"`            // waiting, leading, stopping
	Leader    string `json:"leader,omitempty"` // the holder's identity, from PostgreSQL
	LeaderPID int    `json:"leader_pid,omitempty"`
	Restarts  int    `json:"restarts"`
}

func serve(ctx context.Context, log *slog.Logger, addr, id, url string) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	l, err := postgres.New(db, lockName, postgres.WithIdentity(id))
	if err != nil {
		return err
	}
	sup := &supervise.Supervisor{Logger: log}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := sup.Status()
		resp := status{Replica: id, State: st.State.String(), Restarts: st.Restarts}
		if h, err := postgres.WhoHolds(r.Context(), db, lockName); err == nil && h != nil {
			resp.Leader, resp.LeaderPID = h.ApplicationName, h.PID
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
	mux.Handle("GET /leader", &supervise.StatusHandler{Supervisor: sup})
	mux.Handle("GET /healthz", &supervise.LivenessHandler{Supervisor: sup})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("hello from " + id + "\n")) // every replica serves
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	g.Go(func() error {
		return sup.Run(ctx, l, func(ctx context.Context) error {
			log.Info("leading: relaying the outbox")
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					log.Info("no longer leading")
					return nil
				case <-tick.C:
					// Relay the outbox here: only one replica does.
				}
			}
		})
	})
	return g.Wait()
}
