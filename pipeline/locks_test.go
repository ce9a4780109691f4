package pipeline

import (
	"fmt"
	"testing"
	"time"
)

// TestChannelLocksIndependent: while one channel's delivery holds its lock
// (a slow FTP upload, a hanging HTTP service), no other channel waits for
// it; the same channel does. The striped locks this replaced (64 mutexes,
// a channel mapped by hash) made about one channel in 64 wait for any slow
// delivery, whatever its node.
func TestChannelLocksIndependent(t *testing.T) {
	var l channelLocks
	unlockSlow := l.lock("P.A.SLOW")

	for i := range 1000 {
		key := fmt.Sprintf("P%d.A.B", i)
		got := make(chan func(), 1)
		go func() { got <- l.lock(key) }()
		select {
		case unlock := <-got:
			unlock()
		case <-time.After(5 * time.Second):
			t.Fatalf("channel %s waited for channel P.A.SLOW", key)
		}
	}

	second := make(chan func(), 1)
	go func() { second <- l.lock("P.A.SLOW") }()
	select {
	case <-second:
		t.Fatal("a second delivery on P.A.SLOW ran beside the first")
	case <-time.After(50 * time.Millisecond):
	}
	unlockSlow()
	select {
	case unlock := <-second:
		unlock()
	case <-time.After(5 * time.Second):
		t.Fatal("the second delivery on P.A.SLOW did not get the lock after the first released it")
	}

	l.mu.Lock()
	left := len(l.locks)
	l.mu.Unlock()
	if left != 0 {
		t.Errorf("%d channel locks kept after every delivery ended, want 0", left)
	}
}
