package main

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/onlyone-go/onlyone/locker/postgres"
	"github.com/onlyone-go/onlyone/supervise"
)

// tenants are the names each node also runs, once across the nodes, on
// one postgres.Session per node: many singletons on two connections.
var tenants = []string{"acme", "globex", "initech", "umbrella", "hooli", "stark"}

// runTenants runs a worker per tenant on one Session until ctx ends, and
// tells the parent: "tenant NAME start UNIXNANO" and "tenant NAME stop".
func runTenants(ctx context.Context, db *sql.DB, id string, say func(format string, args ...any)) error {
	s, err := postgres.NewSession(db, postgres.WithIdentity(id+"/tenants"))
	if err != nil {
		return err
	}
	defer s.Close() // after every worker below has stopped
	var wg sync.WaitGroup
	errs := make(chan error, len(tenants))
	for _, t := range tenants {
		l, err := s.Locker("onlyone-demo/tenant/" + t)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sup := &supervise.Supervisor{} // logs what goes wrong; a shed name is routine
			errs <- sup.Run(ctx, l, func(ctx context.Context) error {
				say("tenant %s start %d", t, time.Now().UnixNano())
				<-ctx.Done()
				say("tenant %s stop", t)
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// tenantMap is what the parent knows of the nodes' tenants.
type tenantMap struct {
	mu      sync.Mutex
	on      map[string]string    // tenant → node running it
	started map[string]time.Time // tenant → when it last started
	changed chan struct{}        // a tenant started or stopped (buffered, 1)
}

func newTenantMap() *tenantMap {
	return &tenantMap{on: map[string]string{}, started: map[string]time.Time{}, changed: make(chan struct{}, 1)}
}

// event records a node's "tenant …" line; it reports whether it was one.
func (m *tenantMap) event(node string, f []string) bool {
	if len(f) < 3 || f[0] != "tenant" {
		return false
	}
	m.mu.Lock()
	switch f[2] {
	case "start":
		m.on[f[1]] = node
		if len(f) == 4 {
			ns, _ := strconv.ParseInt(f[3], 10, 64)
			m.started[f[1]] = time.Unix(0, ns)
		}
	case "stop":
		if m.on[f[1]] == node {
			delete(m.on, f[1])
		}
	}
	m.mu.Unlock()
	select {
	case m.changed <- struct{}{}:
	default:
	}
	return true
}

// forget drops what node runs: it was killed.
func (m *tenantMap) forget(node string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var its []string
	for t, n := range m.on {
		if n == node {
			its = append(its, t)
			delete(m.on, t)
		}
	}
	slices.Sort(its)
	return its
}

// wait waits until every tenant runs and cond holds, for at most 30s.
func (m *tenantMap) wait(cond func(on map[string]string) bool) error {
	deadline := time.After(30 * time.Second)
	for {
		m.mu.Lock()
		ok := len(m.on) == len(tenants) && cond(m.on)
		m.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-m.changed:
		case <-deadline:
			return fmt.Errorf("the tenants did not all run within 30s")
		}
	}
}

// spread says which node runs which tenants.
func (m *tenantMap) spread(nodes []string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var parts []string
	for _, n := range nodes {
		var ts []string
		for t, o := range m.on {
			if o == n {
				ts = append(ts, t)
			}
		}
		if len(ts) > 0 {
			slices.Sort(ts)
			parts = append(parts, n+": "+strings.Join(ts, ", "))
		}
	}
	return strings.Join(parts, "; ")
}

// movedAfter waits until the tenants its run on nodes other than from,
// and returns how long after since the last of them started.
func (m *tenantMap) movedAfter(from string, its []string, since time.Time) (time.Duration, error) {
	err := m.wait(func(on map[string]string) bool {
		for _, t := range its {
			if on[t] == from || !m.started[t].After(since) {
				return false
			}
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var last time.Time
	for _, t := range its {
		if m.started[t].After(last) {
			last = m.started[t]
		}
	}
	return last.Sub(since), nil
}

// tenantConns counts the server connections of each node's Session.
func tenantConns(db *sql.DB, nodes []string) string {
	var parts []string
	for _, n := range nodes {
		var c int
		if err := db.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, n+"/tenants").Scan(&c); err != nil {
			return "?"
		}
		parts = append(parts, strconv.Itoa(c))
	}
	return strings.Join(parts, ", ")
}
