package pipeline

import "sync"

// payloadLocks serialise, per payload object, the steps of ingest and of a
// delivery's finish that decide whether a payload of a message routed by
// name stays: such messages of the same content share one object (their id
// has no number), so a retake's "stored already, queue a record naming
// it" and a finished record's "no later record names it, delete it" must
// not interleave (found by review: the retake's record named a deleted
// payload). Only by-name messages take them; the lock is this process's,
// so replicas that ingest and deliver one channel on different machines
// still race in the moment between the look and the delete.
type payloadLocks struct {
	mu sync.Mutex
	m  map[string]*payloadLock
}

type payloadLock struct {
	sync.Mutex
	users int
}

// lock takes the lock of object name and returns its unlock.
func (k *payloadLocks) lock(name string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*payloadLock{}
	}
	l := k.m[name]
	if l == nil {
		l = &payloadLock{}
		k.m[name] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.m, name)
		}
		k.mu.Unlock()
	}
}
