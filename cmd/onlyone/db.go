package main

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// openDB opens a pool on url with pgx, without connecting. The password
// never appears in what it returns: it is parsed out first. When conns
// is not nil, it records every connection the pool dials.
func openDB(url string, conns *connSet) (*sql.DB, redactor, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's parse errors do not repeat the password, but be sure.
		return nil, redactor{}, fmt.Errorf("bad database URL: %s", redactPassword(url, err.Error()))
	}
	if conns != nil {
		cfg.DialFunc = conns.wrap(cfg.DialFunc)
	}
	return stdlib.OpenDB(*cfg), redactor{secret: cfg.Password}, nil
}

// reach checks that db answers, within 15s.
func reach(ctx context.Context, db *sql.DB, r redactor) error {
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		return fmt.Errorf("cannot reach the database: %s", r.Err(err))
	}
	return nil
}

// openReached is openDB, then reach.
func openReached(ctx context.Context, url string) (*sql.DB, redactor, error) {
	db, r, err := openDB(url, nil)
	if err != nil {
		return nil, r, err
	}
	if err := reach(ctx, db, r); err != nil {
		db.Close()
		return nil, r, err
	}
	return db, r, nil
}
