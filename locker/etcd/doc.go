// Package etcd implements locker.Locker on etcd, for programs that already
// run an etcd cluster or outgrow one PostgreSQL server.
//
// A Locker is a name on a *concurrency.Session: the Session owns the lease
// and keeps it alive, and any number of Lockers, for the same name or for
// different names, may share it — as etcd's own Mutex and Election do.
// Unlike etcd's Mutex, two Lockers on one Session exclude each other: each
// Locker writes a key of its own, named by the Session's lease and a
// number unique to the Locker.
//
// # How a lock is held
//
// Contenders for a name write keys under one prefix, bound to their
// Session's lease; the key with the oldest create revision holds the lock
// and the others wait for the deletion of the key just older than theirs,
// as in etcd's recipe. When a Locker's key becomes the oldest, the Locker
// renews the lease once and then writes its key again in a transaction
// that succeeds only if the key still exists: the revision of that write
// is the hold's fencing token, and the write proves that the key — and so
// the lock — is still ours.
//
// # Loss, and what etcd guarantees after it (Grace)
//
// etcd hands the lock to the next contender as soon as the holder's key is
// deleted: by Release, by an operator, by revoking the lease, or by the
// lease expiring on the server because nobody renewed it for its TTL. The
// server restarts a lease's TTL when it handles a renewal, and a renewal is
// handled after the client sent it, so the lease lives on the server at
// least until the send time of the last successful renewal plus the TTL.
//
// etcd's client does not close Session.Done at that moment: it closes it
// one TTL after it *received* the last renewal's answer, which is later
// than the moment the server may expire the lease. Session.Done therefore
// gives no grace at all. A Locker keeps its own account instead: while
// it holds the lock it renews the lease itself every HeartbeatInterval
// (the Session keeps renewing it too; extra renewals only lengthen the
// lease), notes when each successful renewal was sent, and closes Lost at
//
//	send time of the last successful renewal + TTL − Grace − margin
//
// where margin is a tenth of the TTL (clocks of client and server may run
// at slightly different rates; the TTL is whole seconds). So after Lost
// closes for want of renewals, etcd grants the lock to nobody for at least
// Grace: a supervisor whose child stops within Grace never overlaps the
// next holder (see package supervise). A leader election in etcd only
// lengthens leases (the new leader restarts every lease's TTL), so it does
// not shorten the grace.
//
// Lost also closes, without any grace, when the lock is taken away at
// once: when the Locker's key is deleted or its lease revoked (the Locker
// watches its key and hears of this within milliseconds), and when the
// Session ends (closed, orphaned, or its lease gone). Like an operator's
// pg_terminate_backend on PostgreSQL, such a deletion frees the lock
// before the holder can stop; only a fencing token checked by the
// protected resource closes that window, and the window of a process
// paused for longer than its lease.
//
// # Fencing tokens
//
// A hold's token is the revision of the write that confirmed it. etcd's
// revision is one counter for the whole key space, raised by every write
// and never reused (it survives restarts and leader changes, as it is part
// of the replicated log), so a hold's token is greater than the token of
// every hold confirmed before it, of any name under any prefix of the
// cluster. The key's create revision would not do: a contender that
// waited long for one name would get a token older than the holds of
// other names meanwhile.
//
// # Costs
//
// A hold costs one watch, one lease renewal per HeartbeatInterval and
// four goroutines. A waiter watches only the key just older than its own,
// not the whole prefix.
package etcd
