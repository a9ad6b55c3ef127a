package postgres

import (
	"crypto/sha256"
	"encoding/binary"
)

// Key returns the 64-bit advisory-lock key of a lock name: the first eight
// bytes of the SHA-256 of the name, read as a big-endian signed integer.
// An operator can compute it in SQL (PostgreSQL 11 or later):
//
//	SELECT ('x' || left(encode(sha256(convert_to('NAME', 'UTF8')), 'hex'), 16))::bit(64)::bigint;
//
// and find the holder in pg_locks, where a bigint key k is
// classid = k>>32 & 0xFFFFFFFF, objid = k & 0xFFFFFFFF and objsubid = 1
// (see KeyParts).
func Key(name string) int64 {
	sum := sha256.Sum256([]byte(name))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// KeyParts returns the classid and objid columns under which pg_locks
// shows the advisory lock on key.
func KeyParts(key int64) (classid, objid uint32) {
	return uint32(uint64(key) >> 32), uint32(uint64(key))
}
