package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/onlyone-go/onlyone/locker"
)

// A hold is one successful Acquire, until its goroutine has ended.
type hold struct {
	sess  *concurrency.Session
	key   string
	lost  chan struct{} // closed by run when the hold is lost or halted
	stop  chan struct{} // closed by halt
	done  chan struct{} // closed when run and its heartbeat have returned
	rev   int64
	token int64

	released bool // guarded by Locker.mu

	mu    sync.Mutex
	until time.Time // vouched for until then
	err   error     // set before lost is closed
}

// Err returns nil while the hold lasts and why it ended afterwards.
func (h *hold) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *hold) vouchedUntil() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.until
}

// extend moves the vouched-for moment forward (never back).
func (h *hold) extend(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.After(h.until) {
		h.until = t
	}
}

// lose ends the hold with err, once.
func (h *hold) lose(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = err
		close(h.lost)
	}
}

// halt ends the hold (if it lasts) and waits for its goroutines.
func (h *hold) halt() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
	h.lose(locker.ErrNotHeld)
}

// start runs the hold's goroutines: one keeps the vouched-for deadline
// and watches the Session, one watches the key, one renews the lease.
// Each can end the hold; none waits for another: on a silent network
// creating the watch or renewing the lease blocks, and the deadline must
// not wait for them.
func (h *hold) start(l *Locker) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, f := range []func(context.Context, *Locker){h.renew, h.watchKey, h.keepDeadline} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx, l)
		}()
	}
	go func() {
		// Whichever ends the hold, all of them stop.
		select {
		case <-h.stop:
		case <-h.lost:
		}
		cancel()
		wg.Wait()
		close(h.done)
	}()
}

// keepDeadline closes lost when the Session ends or the vouched-for
// deadline passes without a renewal that moves it.
func (h *hold) keepDeadline(ctx context.Context, l *Locker) {
	timer := time.NewTimer(time.Until(h.vouchedUntil()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.sess.Done():
			h.lose(fmt.Errorf("etcd: %s: %w: the session ended (its lease is no longer kept alive)", l.name, locker.ErrLost))
			return
		case <-timer.C:
			if d := time.Until(h.vouchedUntil()); d > 0 {
				timer.Reset(d)
				continue
			}
			h.lose(fmt.Errorf("etcd: %s: %w: no lease renewal succeeded in time to vouch for the hold", l.name, locker.ErrLost))
			return
		}
	}
}

// watchKey closes lost when the key is deleted, or when etcd can no longer
// tell (the watch fails or the member has no leader).
func (h *hold) watchKey(ctx context.Context, l *Locker) {
	wch := l.cli.Watch(clientv3.WithRequireLeader(ctx), h.key, clientv3.WithRev(h.rev+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			h.lose(fmt.Errorf("etcd: %s: %w: watching the key: %w", l.name, locker.ErrLost, err))
			return
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				h.lose(fmt.Errorf("etcd: %s: %w: the key was deleted (lease revoked or expired, or removed by hand)", l.name, locker.ErrLost))
				return
			}
		}
	}
	if ctx.Err() == nil {
		h.lose(fmt.Errorf("etcd: %s: %w: the watch on the key ended", l.name, locker.ErrLost))
	}
}

// renew renews the lease every heartbeat and, on success, vouches for the
// hold until the renewal's send time plus the TTL, less grace and margin.
func (h *hold) renew(ctx context.Context, l *Locker) {
	t := time.NewTicker(l.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.vouchFor())
		ka, err := l.cli.KeepAliveOnce(rctx, h.sess.Lease())
		cancel()
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			h.lose(fmt.Errorf("etcd: %s: %w: the session's lease is gone", l.name, locker.ErrLost))
			return
		case err != nil:
			continue // the deadline decides; a later renewal may succeed
		}
		h.extend(sent.Add(time.Duration(ka.TTL)*time.Second - l.grace - l.margin))
	}
}
