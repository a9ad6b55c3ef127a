# The Go toolchain: the one on PATH, else the usual install location.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)

.PHONY: demo test vet chaos bench

# demo tells the story: three nodes, a crash, a deploy, measured takeovers.
# It starts a throwaway PostgreSQL (or uses DATABASE_URL) and removes it.
demo:
	$(GO) run ./examples/demo

# test runs every test, PostgreSQL ones included (they start a throwaway
# server when PostgreSQL binaries are installed; see README.md).
test: vet
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

# chaos runs 5 nodes for 10 minutes under random faults (SIGKILL, SIGTERM,
# SIGSTOP, partitions, pg_terminate_backend; and every 20s a server fault:
# restart immediate or fast, crash-reset, standby promotion) and checks
# their records. CHAOS_FLAGS overrides the length and pace, e.g.
# make chaos CHAOS_FLAGS='-duration 5m -every 150ms'.
CHAOS_FLAGS ?= -duration 10m
chaos:
	$(GO) run ./internal/chaos/cmd/chaos -nodes 5 $(CHAOS_FLAGS)

# bench measures takeovers side by side with a raw lock and etcd (bench/ has
# its own go.mod), against a server with fsync on as in production; it
# writes bench/results.json and bench/takeover.png.
bench:
	cd bench && $(GO) run ./cmd/takeover -n 20 -n-slow 5 -md RESULTS.tables.md
	$(GO) test -run '^$$' -bench . -benchtime 20x ./locker/postgres/
