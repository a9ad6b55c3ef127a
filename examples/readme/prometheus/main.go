package main

import (
	"context"
	"database/sql"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/onlyone-go/onlyone/adapter/metrics"
	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	l, err := postgres.New(db, "outbox-relay")
	if err != nil {
		log.Fatal(err)
	}
	col := metrics.New()
	prometheus.MustRegister(col)
	go func() { log.Println(http.ListenAndServe(":9090", promhttp.Handler())) }()

	s := &supervise.Supervisor{OnEvent: func(e supervise.Event) { /* your own hook, if any */ }}
	s.OnEvent = col.Hook("outbox-relay", s.OnEvent) // records, then calls your hook
	if err := s.Run(ctx, l, relay); err != nil {
		log.Fatal(err)
	}
}

func relay(ctx context.Context) error { <-ctx.Done(); return nil }
