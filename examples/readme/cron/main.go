package main

import (
	"context"
	"database/sql"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/robfig/cron/v3"

	"github.com/onlyone-go/onlyone/adapter/cronlock"
	"github.com/onlyone-go/onlyone/adapter/leader"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	// Every node's cron fires; each tick runs on the node that claims it.
	ticks := &leader.Ticks{DB: db, Window: 30 * time.Second} // half the period
	c := cron.New()
	_, err = c.AddJob("* * * * *", cronlock.OncePerTick(ticks, "cleanup", nil)(cron.FuncJob(cleanup)))
	if err != nil {
		log.Fatal(err)
	}
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
}

func cleanup() {}
