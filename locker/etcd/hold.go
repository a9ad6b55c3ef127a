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

// start runs the hold's goroutines: one watches the key, the session and
// the vouched-for deadline; one renews the lease.
func (h *hold) start(l *Locker) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		h.renew(ctx, l)
	}()
	go func() {
		defer wg.Done()
		h.watch(ctx, l)
	}()
	go func() {
		// Whichever ends the hold, both goroutines stop.
		select {
		case <-h.stop:
		case <-h.lost:
		}
		cancel()
		wg.Wait()
		close(h.done)
	}()
}

// watch closes lost when the key is deleted, the Session ends, or the
// vouched-for deadline passes without a renewal. The deadline is kept on
// a timer of its own: a renewal that hangs on a silent network does not
// hold it up.
func (h *hold) watch(ctx context.Context, l *Locker) {
	wch := l.cli.Watch(clientv3.WithRequireLeader(ctx), h.key, clientv3.WithRev(h.rev+1))
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
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return
				}
				h.lose(fmt.Errorf("etcd: %s: %w: the watch on the key ended", l.name, locker.ErrLost))
				return
			}
			if err := wr.Err(); err != nil {
				// WithRequireLeader: the member lost its leader. A
				// deletion could go unseen; fail safe.
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
