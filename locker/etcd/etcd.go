package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/onlyone-go/onlyone/locker"
)

// DefaultPrefix starts the keys of every lock, unless WithPrefix says
// otherwise.
const DefaultPrefix = "/onlyone/lock/"

// Defaults, as parts of the Session's lease TTL; see New.
const (
	// DefaultTTL is the lease TTL of NewWithClient: a frozen or cut-off
	// holder is replaced about 10s after its last renewal, as with
	// locker/postgres at its defaults.
	DefaultTTL = 10

	// DefaultMaxGrace caps the default grace: 5s, OTP's default shutdown
	// time for a worker, like package supervise.
	DefaultMaxGrace = 5 * time.Second
)

// ErrSessionDone is matched by the error Acquire returns when the
// Session's lease is no longer kept alive (closed, orphaned, expired):
// no lock can be held on it any more. Make a new Session.
var ErrSessionDone = errors.New("etcd: session is done")

// An Option changes a setting of New.
type Option func(*config)

type config struct {
	ttl       int
	prefix    string
	grace     time.Duration
	heartbeat time.Duration
	identity  string
}

// WithPrefix sets the prefix under which the lock's keys are written
// (default DefaultPrefix). Lockers share a lock when they have the same
// prefix and name, on the same etcd cluster.
func WithPrefix(p string) Option { return func(c *config) { c.prefix = p } }

// WithGrace sets how long, after Lost closes for want of lease renewals,
// etcd is guaranteed to grant the lock to nobody else (default: a quarter
// of the lease TTL, at most DefaultMaxGrace). It must leave room in the
// TTL for the margin and at least two heartbeats.
func WithGrace(d time.Duration) Option { return func(c *config) { c.grace = d } }

// WithHeartbeatInterval sets how often a holder renews the lease itself
// to vouch for its hold (default: a sixth of the lease TTL).
func WithHeartbeatInterval(d time.Duration) Option { return func(c *config) { c.heartbeat = d } }

// WithTTL sets the TTL, in seconds, of the leases that a Locker made by
// NewWithClient grants itself (default DefaultTTL). New ignores it: the
// Session's lease has its TTL already.
func WithTTL(seconds int) Option { return func(c *config) { c.ttl = seconds } }

// WithIdentity sets the value written to the holder's key, for operators
// who look up who holds a lock (default: host name and process id).
func WithIdentity(id string) Option { return func(c *config) { c.identity = id } }

// A Locker is one contender for a named lock on etcd, made on a Session
// by New. It implements locker.Locker, locker.Errer, locker.Graceful,
// locker.Fencer and locker.Voucher.
type Locker struct {
	shared    *concurrency.Session // from New; nil for NewWithClient
	cli       *clientv3.Client
	name      string
	pfx       string // prefix of every contender's key for this name
	seq       uint64 // this Locker's number in the process
	ttlSec    int    // of the private Sessions of NewWithClient
	identity  string
	ttl       time.Duration
	grace     time.Duration
	margin    time.Duration
	heartbeat time.Duration

	op sync.Mutex // serialises Acquire and Release

	mu   sync.Mutex
	hold *hold // the current or last hold; nil before the first
	err  error // why not held, when hold is nil or released

	// Guarded by op.
	sess  *concurrency.Session // the Session of the current or last attempt
	key   string               // our key on sess
	dirty bool                 // our key may exist in etcd
}

var (
	_ locker.Locker   = (*Locker)(nil)
	_ locker.Errer    = (*Locker)(nil)
	_ locker.Graceful = (*Locker)(nil)
	_ locker.Fencer   = (*Locker)(nil)
	_ locker.Voucher  = (*Locker)(nil)
)

// lockerSeq numbers the Lockers of this process, so that two Lockers on one
// Session have keys of their own.
var lockerSeq atomic.Uint64

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// New returns a contender for name on the Session s, which it may share
// with any number of other Lockers. It asks etcd once for the lease's TTL,
// from which the defaults follow:
//
//   - Grace: a quarter of the TTL, at most DefaultMaxGrace
//   - HeartbeatInterval: a sixth of the TTL
//   - margin (not settable): a tenth of the TTL
//
// A hold is then vouched for until TTL − Grace − margin after the send
// time of its last successful renewal. With etcd's default session TTL of
// 60s: a renewal every 10s, Lost after 49s without one, Grace 5s. With a
// TTL of 10s: every 1.67s, Lost after 6.5s, Grace 2.5s. Settings that leave
// less than two heartbeats before Lost return an error matching
// locker.ErrConfig.
//
// Once the Session ends (closed, or its lease revoked or expired), Acquire
// returns an error matching ErrSessionDone: a program that must outlive
// its Session, such as one under package supervise, wants NewWithClient.
func New(s *concurrency.Session, name string, opts ...Option) (*Locker, error) {
	if s == nil {
		return nil, fmt.Errorf("etcd: %w: nil Session", locker.ErrConfig)
	}
	ctx, cancel := context.WithTimeout(s.Ctx(), 10*time.Second)
	defer cancel()
	ttlResp, err := s.Client().TimeToLive(ctx, s.Lease())
	if err != nil {
		return nil, fmt.Errorf("etcd: reading the session's lease TTL: %w", err)
	}
	if ttlResp.TTL <= 0 {
		return nil, fmt.Errorf("etcd: %w: the session's lease has expired", ErrSessionDone)
	}
	l, err := newLocker(s.Client(), name, int(ttlResp.GrantedTTL), opts)
	if err != nil {
		return nil, err
	}
	l.shared, l.sess = s, s
	return l, nil
}

// NewWithClient returns a contender for name with a Session of its own:
// each Acquire grants a lease of WithTTL seconds (default DefaultTTL) and
// Release revokes it. A hold lost with its lease does not end the Locker:
// the next Acquire starts afresh, as package supervise expects. The
// defaults follow from the TTL as for New: at DefaultTTL, a renewal every
// 1.67s, Lost 6.5s after the last one sent, Grace 2.5s.
func NewWithClient(cli *clientv3.Client, name string, opts ...Option) (*Locker, error) {
	if cli == nil {
		return nil, fmt.Errorf("etcd: %w: nil Client", locker.ErrConfig)
	}
	var c config
	for _, o := range opts {
		o(&c)
	}
	ttl := c.ttl
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < 0 {
		return nil, fmt.Errorf("etcd: %w: TTL is %ds, want more than zero", locker.ErrConfig, ttl)
	}
	l, err := newLocker(cli, name, ttl, opts)
	if err != nil {
		return nil, err
	}
	l.ttlSec = ttl
	return l, nil
}

func newLocker(cli *clientv3.Client, name string, ttlSec int, opts []Option) (*Locker, error) {
	if name == "" {
		return nil, fmt.Errorf("etcd: %w: empty lock name", locker.ErrConfig)
	}
	host, _ := os.Hostname()
	c := config{prefix: DefaultPrefix, identity: host + ":" + strconv.Itoa(os.Getpid())}
	for _, o := range opts {
		o(&c)
	}
	l := &Locker{
		cli:      cli,
		name:     name,
		pfx:      c.prefix + url.PathEscape(name) + "/",
		seq:      lockerSeq.Add(1),
		identity: c.identity,
		ttl:      time.Duration(ttlSec) * time.Second,
		err:      locker.ErrNotHeld,
	}
	l.margin = l.ttl / 10
	l.grace = c.grace
	if l.grace == 0 {
		l.grace = min(l.ttl/4, DefaultMaxGrace)
	}
	l.heartbeat = c.heartbeat
	if l.heartbeat == 0 {
		l.heartbeat = l.ttl / 6
	}
	if l.grace < 0 || l.heartbeat <= 0 {
		return nil, fmt.Errorf("etcd: %w: Grace (%v) and HeartbeatInterval (%v) must be positive", locker.ErrConfig, l.grace, l.heartbeat)
	}
	if l.vouchFor() < 2*l.heartbeat {
		return nil, fmt.Errorf("etcd: %w: the lease TTL (%v) minus Grace (%v) and margin (%v) leaves less than two HeartbeatIntervals (%v) in which to renew",
			locker.ErrConfig, l.ttl, l.grace, l.margin, l.heartbeat)
	}
	return l, nil
}

// vouchFor is how long after a renewal's send time a hold is vouched for.
func (l *Locker) vouchFor() time.Duration { return l.ttl - l.grace - l.margin }

// Name returns the lock's name.
func (l *Locker) Name() string { return l.name }

// Prefix returns the prefix under which contenders for this lock write
// their keys; the key with the oldest create revision is the holder's.
func (l *Locker) Prefix() string { return l.pfx }

// Grace reports how long after Lost closes for want of renewals etcd
// grants the lock to nobody else (see the package doc).
func (l *Locker) Grace() time.Duration { return l.grace }

// Lost returns a channel that is closed when this Locker does not hold the
// lock; see locker.Locker.
func (l *Locker) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil || l.hold.released {
		return closed
	}
	return l.hold.lost
}

// Err returns nil while the lock is held, ErrNotHeld before the first
// Acquire and after Release, and an error matching locker.ErrLost after
// the hold was lost.
func (l *Locker) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil || l.hold.released {
		return l.err
	}
	return l.hold.Err()
}

// Token returns the current hold's fencing token: the etcd revision of the
// write that confirmed it.
func (l *Locker) Token() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil || l.hold.released || l.hold.Err() != nil {
		return 0, false
	}
	return uint64(l.hold.token), true
}

// VouchedUntil returns the moment at which Lost closes unless a renewal of
// the lease succeeds before then, or the zero time when the lock is not
// held.
func (l *Locker) VouchedUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.hold
	if h == nil || h.released || h.Err() != nil {
		return time.Time{}
	}
	return h.vouchedUntil()
}

// Acquire blocks until this Locker holds the lock, ctx is done, or etcd
// fails; see locker.Locker. On an error, the Locker's key is deleted (a
// Locker of NewWithClient revokes its lease), so that it does not stand in
// anyone's way; if even that fails, the next Acquire or Release deletes
// it, or it expires with its lease.
func (l *Locker) Acquire(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	if h := l.current(); h != nil {
		if h.Err() == nil {
			return locker.ErrHeld
		}
		l.endHold(h, h.Err()) // lost, not yet released
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcd: acquiring %s: %w", l.name, err)
	}
	nh, err := l.acquire(ctx)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		_ = l.cleanUp(context.Background())
		return fmt.Errorf("etcd: acquiring %s: %w", l.name, err)
	}
	l.mu.Lock()
	l.hold = nh
	l.mu.Unlock()
	nh.start(l)
	return nil
}

// session returns the Session to wait on: the shared one, or a new
// private one.
func (l *Locker) session(ctx context.Context) (*concurrency.Session, error) {
	if l.shared != nil {
		select {
		case <-l.shared.Done():
			return nil, ErrSessionDone
		default:
			return l.shared, nil
		}
	}
	// Grant the lease under ctx (NewSession would grant it under the
	// client's context, which a caller cannot cancel).
	g, err := l.cli.Grant(ctx, int64(l.ttlSec))
	if err != nil {
		return nil, fmt.Errorf("granting a lease: %w", err)
	}
	s, err := concurrency.NewSession(l.cli, concurrency.WithLease(g.ID), concurrency.WithTTL(l.ttlSec))
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.ttl)
		_, _ = l.cli.Revoke(rctx, g.ID)
		cancel()
		return nil, fmt.Errorf("keeping the lease alive: %w", err)
	}
	return s, nil
}

// acquire waits for the lock and confirms it; it returns the new hold,
// not yet started.
func (l *Locker) acquire(ctx context.Context) (*hold, error) {
	if l.shared == nil && l.dirty {
		_ = l.cleanUp(ctx) // the private Session of a lost hold
	}
	sess, err := l.session(ctx)
	if err != nil {
		return nil, err
	}
	lease := sess.Lease()
	key := fmt.Sprintf("%s%016x/%x-%x", l.pfx, int64(lease), os.Getpid(), l.seq)
	l.sess, l.key, l.dirty = sess, key, true
	// Put our key unless it exists already (a hold that was lost for want
	// of renewals while the lease lived on), and read the oldest key.
	resp, err := l.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, l.identity, clientv3.WithLease(lease)), clientv3.OpGet(l.pfx, clientv3.WithFirstCreate()...)).
		Else(clientv3.OpGet(key), clientv3.OpGet(l.pfx, clientv3.WithFirstCreate()...)).
		Commit()
	if err != nil {
		return nil, err
	}
	myRev := resp.Header.Revision
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil, errors.New("our key vanished while it was being written")
		}
		myRev = kvs[0].CreateRevision
	}
	owner := resp.Responses[1].GetResponseRange().Kvs
	if len(owner) == 0 || owner[0].CreateRevision != myRev {
		if err := l.waitTurn(ctx, sess, myRev); err != nil {
			return nil, err
		}
	}
	// Ours now. Renew the lease, noting when the renewal was sent: the
	// server keeps the lease at least until then plus the TTL.
	sent := time.Now()
	ka, err := l.cli.KeepAliveOnce(ctx, lease)
	if err != nil {
		return nil, fmt.Errorf("renewing the lease: %w", err)
	}
	// Confirm that our key still exists, and take a fresh revision as the
	// token.
	cresp, err := l.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", myRev)).
		Then(clientv3.OpPut(key, l.identity, clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return nil, err
	}
	if !cresp.Succeeded {
		return nil, fmt.Errorf("%w: our key was deleted while we waited (lease revoked or expired)", locker.ErrLost)
	}
	h := &hold{
		sess:  sess,
		key:   key,
		lost:  make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		rev:   cresp.Header.Revision,
		token: cresp.Header.Revision,
	}
	h.until = sent.Add(time.Duration(ka.TTL)*time.Second - l.grace - l.margin)
	if !time.Now().Before(h.until) {
		return nil, errors.New("etcd answered too slowly to vouch for the hold")
	}
	return h, nil
}

// waitTurn waits until no key older than ours (create revision myRev)
// exists under the prefix: each time for the deletion of the youngest of
// the older ones, so that one release wakes one waiter.
func (l *Locker) waitTurn(ctx context.Context, sess *concurrency.Session, myRev int64) error {
	for {
		resp, err := l.cli.Get(ctx, l.pfx, clientv3.WithPrefix(), clientv3.WithMaxCreateRev(myRev-1),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(1))
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		if err := l.waitDelete(ctx, sess, string(resp.Kvs[0].Key), resp.Header.Revision); err != nil {
			return err
		}
	}
}

// waitDelete waits until key is deleted after revision rev.
func (l *Locker) waitDelete(ctx context.Context, sess *concurrency.Session, key string, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A session that ends takes our key with it: stop waiting then.
	stop := context.AfterFunc(sess.Ctx(), cancel)
	defer stop()
	wch := l.cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev+1), clientv3.WithFilterPut())
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-sess.Done():
		return ErrSessionDone
	default:
	}
	return errors.New("the watch ended")
}

// current returns the hold that has not been released, if any.
func (l *Locker) current() *hold {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil || l.hold.released {
		return nil
	}
	return l.hold
}

// endHold stops h's goroutines and records why the Locker does not hold.
func (l *Locker) endHold(h *hold, why error) {
	h.halt()
	l.mu.Lock()
	h.released = true
	l.err = why
	l.mu.Unlock()
}

// Release gives the lock up: it stops vouching for the hold, closes Lost,
// and deletes this Locker's key (a Locker of NewWithClient revokes its
// lease), which hands the lock to the next waiter. If that fails (etcd
// unreachable), Release returns an error; the key then expires with its
// lease or is deleted by the next Acquire or Release.
func (l *Locker) Release(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	if h := l.current(); h != nil {
		l.endHold(h, locker.ErrNotHeld)
	}
	if err := l.cleanUp(ctx); err != nil {
		return fmt.Errorf("etcd: releasing %s: %w", l.name, err)
	}
	return nil
}

// cleanUp deletes our key if it may exist, and ends a private Session.
func (l *Locker) cleanUp(ctx context.Context) error {
	if !l.dirty {
		return nil
	}
	// A caller whose ctx is already done still wants the key gone: left
	// behind, it would stand in everyone's way while its lease lives.
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, min(l.ttl, 10*time.Second))
	defer cancel()
	if l.shared == nil {
		// Revoking the lease deletes the key with it.
		l.sess.Orphan()
		if _, err := l.cli.Revoke(ctx, l.sess.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.dirty = false // nothing renews the lease: it expires within its TTL
			return fmt.Errorf("revoking lease %x (it expires within %v): %w", int64(l.sess.Lease()), l.ttl, err)
		}
		l.dirty = false
		return nil
	}
	if _, err := l.cli.Delete(ctx, l.key); err != nil {
		return fmt.Errorf("deleting %s: %w", l.key, err)
	}
	l.dirty = false
	return nil
}
