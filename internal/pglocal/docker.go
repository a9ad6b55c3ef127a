package pglocal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"
)

var errNoDocker = errors.New("pglocal: no Docker engine")

// startDocker starts postgres:15 in a container that removes itself when
// stopped and expires after an hour, should the process that started it
// die first.
func startDocker() (*Server, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, errNoDocker
	}
	if err := pool.Client.Ping(); err != nil {
		return nil, errNoDocker
	}
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: "postgres",
		Tag:        "15",
		Env:        []string{"POSTGRES_HOST_AUTH_METHOD=trust"},
		Cmd:        []string{"postgres", "-c", "max_connections=400", "-c", "fsync=off"},
	}, func(hc *docker.HostConfig) {
		hc.AutoRemove = true
		hc.RestartPolicy = docker.RestartPolicy{Name: "no"}
	})
	if err != nil {
		return nil, fmt.Errorf("pglocal: starting a postgres container: %w", err)
	}
	_ = res.Expire(3600)
	url := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", res.GetHostPort("5432/tcp"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ping(ctx, url, nil); err != nil {
		_ = pool.Purge(res)
		return nil, err
	}
	return &Server{URL: url, Kind: "docker", stop: func() error { return pool.Purge(res) }}, nil
}
