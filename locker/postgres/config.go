package postgres

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/onlyone-go/onlyone/locker"
)

// Defaults. With them a crashed holder is replaced within milliseconds, and
// a frozen or partitioned one after at most DefaultSessionTimeout (10s).
const (
	DefaultHeartbeatInterval = time.Second
	DefaultLossTimeout       = 3 * time.Second
	DefaultGrace             = 5 * time.Second
	DefaultMargin            = 2 * time.Second
	DefaultSessionTimeout    = DefaultLossTimeout + DefaultGrace + DefaultMargin
	DefaultWaitChunk         = 2 * time.Second

	// MinMargin is the least time by which SessionTimeout must exceed
	// LossTimeout + Grace: room for scheduling delays and clocks that do
	// not run at quite the same rate on client and server.
	MinMargin = time.Second
)

// maxIdentity is the longest application_name PostgreSQL keeps
// (NAMEDATALEN - 1); longer ones are truncated by the server.
const maxIdentity = 63

// An Option changes a setting of a Locker made by New or NewKey.
type Option func(*config)

type config struct {
	heartbeat      time.Duration
	loss           time.Duration
	grace          time.Duration
	sessionTimeout time.Duration // 0: loss + grace + DefaultMargin
	waitChunk      time.Duration
	identity       string
	logger         *slog.Logger
	noSpread       bool // a Session keeps what it takes (WithSpread(false))
}

// WithHeartbeatInterval sets how often the holder checks that its session
// is alive and still its own. Default 1s.
func WithHeartbeatInterval(d time.Duration) Option { return func(c *config) { c.heartbeat = d } }

// WithLossTimeout sets how long after the send time of the last heartbeat
// that succeeded the holder gives the lock up (closes Lost) when no later
// one succeeds. It must be at least 2.5 times the heartbeat interval: each
// heartbeat waits one interval on the server before it answers, so the next
// answer comes two intervals and two round trips after the last good one
// was sent. Default 3s.
func WithLossTimeout(d time.Duration) Option { return func(c *config) { c.loss = d } }

// WithGrace sets the time a holder has to stop its work after Lost closes,
// during which the server will not grant the lock to anyone else; the
// supervisor refuses a longer shutdown timeout. Default 5s.
func WithGrace(d time.Duration) Option { return func(c *config) { c.grace = d } }

// WithSessionTimeout sets the server-side bound: the holder's session sets
// idle_session_timeout, idle_in_transaction_session_timeout and
// statement_timeout to it, so the server ends the session of a holder that
// has been silent that long (frozen, partitioned) and frees its lock. It
// must be at least LossTimeout + Grace + MinMargin. Default LossTimeout +
// Grace + 2s.
func WithSessionTimeout(d time.Duration) Option { return func(c *config) { c.sessionTimeout = d } }

// WithWaitChunk sets how long one blocking lock statement may wait
// (lock_timeout) before it is re-issued. A waiting statement holds a
// snapshot that holds back VACUUM, so no waiter holds one longer than
// this. Default 2s.
func WithWaitChunk(d time.Duration) Option { return func(c *config) { c.waitChunk = d } }

// WithIdentity sets the application_name of the lock's session, which
// Holder reports as the holder's identity: at most 63 bytes of printable
// ASCII. Default "onlyone/HOSTNAME/PID".
func WithIdentity(id string) Option { return func(c *config) { c.identity = id } }

// WithLogger sets where the Locker logs its holds, losses and warnings.
// Default: nowhere.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithSpread sets whether the Lockers of a Session spread their names
// evenly over the live Sessions of the database: a Session that holds more
// than its share gives the extras up (their Lost closes first), and takes
// no more than its share of free names while other Sessions are at theirs.
// Off, a Session keeps whatever it takes, first come. Default on. It does
// nothing for a Locker made by New or NewKey.
func WithSpread(on bool) Option { return func(c *config) { c.noSpread = !on } }

// DefaultIdentity returns "onlyone/HOSTNAME/PID", cut to 63 bytes.
func DefaultIdentity() string {
	host, _ := os.Hostname()
	id := fmt.Sprintf("onlyone/%s/%d", host, os.Getpid())
	if len(id) > maxIdentity {
		id = id[:maxIdentity]
	}
	return id
}

func newConfig(opts []Option) (config, error) {
	c := config{
		heartbeat: DefaultHeartbeatInterval,
		loss:      DefaultLossTimeout,
		grace:     DefaultGrace,
		waitChunk: DefaultWaitChunk,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.identity == "" {
		c.identity = DefaultIdentity()
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"HeartbeatInterval", c.heartbeat}, {"LossTimeout", c.loss}, {"Grace", c.grace}, {"WaitChunk", c.waitChunk}} {
		if d.v <= 0 {
			return c, configError("%s is %v, want a positive duration", d.name, d.v)
		}
	}
	if c.sessionTimeout == 0 {
		c.sessionTimeout = c.loss + c.grace + DefaultMargin
	}
	switch {
	case 2*c.loss < 5*c.heartbeat:
		// A heartbeat waits HeartbeatInterval on the server before it
		// answers, and the next one is sent only then: the deadline one
		// extends must leave room for two intervals and two round trips.
		// At exactly two intervals every hold was lost within a few
		// heartbeats.
		return c, configError("LossTimeout (%v) must be at least 2.5 × HeartbeatInterval (%v): each heartbeat waits one interval on the server before it answers, so the next answer comes two intervals and two round trips after the last good heartbeat was sent, and the lock would be given up between two of them", c.loss, c.heartbeat)
	case c.sessionTimeout < c.loss+c.grace+MinMargin:
		return c, configError("SessionTimeout (%v) must be at least LossTimeout (%v) + Grace (%v) + %v: otherwise the server may free the lock while the holder's work still runs", c.sessionTimeout, c.loss, c.grace, MinMargin)
	case c.waitChunk >= c.sessionTimeout:
		return c, configError("WaitChunk (%v) must be shorter than SessionTimeout (%v), which bounds every statement", c.waitChunk, c.sessionTimeout)
	case c.sessionTimeout%time.Millisecond != 0 || c.waitChunk%time.Millisecond != 0:
		return c, configError("SessionTimeout (%v) and WaitChunk (%v) must be whole milliseconds, as the server takes them", c.sessionTimeout, c.waitChunk)
	case len(c.identity) > maxIdentity:
		return c, configError("Identity %q is %d bytes; PostgreSQL keeps at most %d", c.identity, len(c.identity), maxIdentity)
	}
	for _, r := range c.identity {
		if r < 0x20 || r > 0x7e {
			return c, configError("Identity %q: PostgreSQL keeps only printable ASCII in application_name", c.identity)
		}
	}
	return c, nil
}

func configError(format string, args ...any) error {
	return fmt.Errorf("postgres: %w: "+format, append([]any{locker.ErrConfig}, args...)...)
}
