package main

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// openDB opens a pool on url with pgx and checks that it answers. The
// password never appears in what it returns: it is parsed out first.
func openDB(ctx context.Context, url string) (*sql.DB, redactor, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's parse errors do not repeat the password, but be sure.
		return nil, redactor{}, fmt.Errorf("bad database URL: %s", redactPassword(url, err.Error()))
	}
	r := redactor{secret: cfg.Password}
	db := stdlib.OpenDB(*cfg)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, r, fmt.Errorf("cannot reach the database: %s", r.Err(err))
	}
	return db, r, nil
}
