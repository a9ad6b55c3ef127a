# The Go toolchain: the one on PATH, else the usual install location.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)

.PHONY: demo test vet vet-modules core-deps chaos bench

# demo tells the story: three nodes, a crash, a deploy, measured takeovers.
# It starts a throwaway PostgreSQL (or uses DATABASE_URL) and removes it.
demo:
	$(GO) run ./examples/demo

# MODULES have a go.mod of their own, so that the core module never gains
# their dependencies (etcd, gocron, robfig/cron, Prometheus). Each builds
# against the core in this tree (a replace directive), so a core change
# that breaks one fails make test.
MODULES := locker/etcd adapter/gocronlock adapter/cronlock adapter/metrics

# README_MODULES are README.md's programs that use the adapters; go vet
# compiles them (examples/readme keeps them equal to the README's text).
README_MODULES := examples/readme/gocron examples/readme/cron examples/readme/asynq examples/readme/prometheus

# test runs every test of the core and of every module, PostgreSQL ones
# included (they start a throwaway server when PostgreSQL binaries are
# installed; see README.md), and the etcd backend's against a real etcd.
# It runs them all even when one fails, keeps their output in TESTLOG, and
# ends by printing the failures again, alone, where a log's tail shows
# them.
TESTLOG ?= $(CURDIR)/test.log
test: vet vet-modules core-deps
	@{ $(GO) test -race -count=1 -timeout 15m ./... 2>&1 || echo "make test: the core module failed"; } | tee $(TESTLOG)
	@for m in $(MODULES); do echo "== $$m"; { (cd $$m && $(GO) test -race -count=1 ./... 2>&1) || echo "make test: module $$m failed"; }; done | tee -a $(TESTLOG)
	@if grep -q '^make test: .* failed$$' $(TESTLOG); then \
		echo "== make test failed; the failures again (the whole output is in $(TESTLOG)):"; \
		awk -f internal/testlog/failures.awk $(TESTLOG); exit 1; fi

# vet-modules vets every module of its own, bench and README's programs
# included, and checks that their go.mod and go.sum are tidy.
vet-modules:
	set -e; for m in $(MODULES) $(README_MODULES) bench; do echo "== vet $$m"; (cd $$m && $(GO) vet ./... && $(GO) mod tidy -diff); done

# core-deps fails if the core module depends, even indirectly, on what only
# the modules above may use.
core-deps:
	@if $(GO) mod graph | grep -E 'go-co-op/gocron|robfig/cron|go\.etcd\.io/etcd|prometheus/client_golang'; then \
		echo "core-deps: the core module depends on an adapter's dependency (above)"; exit 1; fi

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
	cd bench && $(GO) run ./cmd/many -names 1000 -n 10 -plain 100 -md MANY.md
	$(GO) test -run '^$$' -bench . -benchtime 20x ./locker/postgres/
