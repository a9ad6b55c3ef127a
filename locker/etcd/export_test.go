package etcd

import clientv3 "go.etcd.io/etcd/client/v3"

// LeaseOf returns the lease of l's current hold.
func LeaseOf(l *Locker) (clientv3.LeaseID, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil || l.hold.released {
		return 0, false
	}
	return l.hold.sess.Lease(), true
}

// KeyOf returns the key of l's current hold.
func KeyOf(l *Locker) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hold == nil || l.hold.released {
		return "", false
	}
	return l.hold.key, true
}
