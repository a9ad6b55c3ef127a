package chaos

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/onlyone-go/onlyone/internal/faultproxy"
	"github.com/onlyone-go/onlyone/internal/pglocal"
)

// serverFault injects a server fault and returns once the primary takes
// queries again.
func (c *controller) serverFault(kind string) error {
	c.srvMu.Lock()
	srv := c.srv
	c.srvMu.Unlock()
	switch kind {
	case RestartImmediate, RestartFast:
		return srv.Restart(kind == RestartImmediate)
	case CrashReset:
		return c.crashReset()
	case Failover:
		return c.failover()
	}
	return fmt.Errorf("chaos: no server fault %q", kind)
}

// crashReset SIGKILLs one backend of the primary (the controller's own
// session: unrelated to the lock), which makes the postmaster end every
// other session, reinitialise shared memory and recover, without
// restarting: pg_postmaster_start_time() stays as it was.
func (c *controller) crashReset() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.admin.Conn(ctx)
	if err != nil {
		return err
	}
	var pid int
	err = conn.QueryRowContext(ctx, "SELECT pg_catalog.pg_backend_pid()").Scan(&pid)
	if err == nil {
		err = syscall.Kill(pid, syscall.SIGKILL) // needs root or the server's user
	}
	conn.Close() // dead now: the pool finds out and drops it
	if err != nil {
		return err
	}
	return c.waitPrimary(60 * time.Second)
}

// waitPrimary waits until the primary takes queries again.
func (c *controller) waitPrimary(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var inRecovery bool
		err := c.admin.QueryRowContext(ctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery)
		cancel()
		if err == nil && !inRecovery {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: the primary does not take queries %v after the fault: %v", limit, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the server: it sends no event
	}
}

// failover shuts the primary down, promotes the standby made for it and
// points every proxy — the nodes' and the controller's — at it: the nodes
// reconnect to the new primary at the addresses they know. A new standby is
// then made in the background for the next failover.
func (c *controller) failover() error {
	c.srvMu.Lock()
	old, standby := c.srv, c.standby
	c.standby = nil
	c.srvMu.Unlock()
	if standby == nil {
		c.prepareStandby()
		return errors.New("no standby ready yet; skipped")
	}
	err := old.Failover(standby)
	proxies := []*faultproxy.Proxy{c.adminProxy}
	for _, n := range c.nodes {
		proxies = append(proxies, n.proxy)
	}
	for _, px := range proxies {
		px.Retarget(standby.Addr())
	}
	c.srvMu.Lock()
	c.srv = standby
	c.srvMu.Unlock()
	_ = old.Stop()
	if err != nil {
		return err
	}
	if err := c.waitPrimary(60 * time.Second); err != nil {
		return err
	}
	c.prepareStandby()
	return nil
}

// prepareStandby starts making a standby of the primary in the
// background, unless one is ready or being made. A server fault during
// pg_basebackup fails it; the next failover then asks again.
func (c *controller) prepareStandby() {
	c.srvMu.Lock()
	defer c.srvMu.Unlock()
	if c.standby != nil || c.building {
		return
	}
	c.building = true
	primary := c.srv
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		sb, err := primary.StartStandby()
		c.srvMu.Lock()
		defer c.srvMu.Unlock()
		c.building = false
		if err != nil {
			fmt.Fprintln(c.cfg.Log, "chaos: making a standby:", err)
			return
		}
		if c.srv != primary { // the primary changed meanwhile
			_ = sb.Stop()
			return
		}
		c.standby = sb
	}()
}

// stopServers stops the standby, then the primary, and removes them.
func (c *controller) stopServers() {
	c.wg.Wait() // a standby being made
	c.srvMu.Lock()
	defer c.srvMu.Unlock()
	for _, s := range []*pglocal.Server{c.standby, c.srv} {
		if s != nil {
			if err := s.Stop(); err != nil {
				fmt.Fprintln(c.cfg.Log, "chaos:", err)
			}
		}
	}
}
