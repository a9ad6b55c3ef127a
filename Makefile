# The Go toolchain: the one on PATH, else the usual install location.
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)

.PHONY: demo test vet

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
