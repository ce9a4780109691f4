package pipeline

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestChannelLocksIndependent: while one channel's delivery holds its lock
// (a slow FTP upload, a hanging HTTP service), no other channel waits for
// it; the same channel waits, but only until the running delivery has had
// the channel as long as it was told. The striped
// locks this replaced (64 mutexes, a channel mapped by hash) made about one
// channel in 64 wait for any slow delivery, whatever its node.
func TestChannelLocksIndependent(t *testing.T) {
	ctx := context.Background()
	var l channelLocks
	took := time.Now()
	unlockSlow, ok := l.lock(ctx, "P.A.SLOW", time.Second)
	if !ok {
		t.Fatal("a free channel's lock was not taken")
	}

	for i := range 1000 {
		key := fmt.Sprintf("P%d.A.B", i)
		unlock, ok := l.lock(ctx, key, 5*time.Second)
		if !ok {
			t.Fatalf("channel %s waited for channel P.A.SLOW", key)
		}
		unlock()
	}

	if _, ok := l.lock(ctx, "P.A.SLOW", 200*time.Millisecond); ok {
		t.Fatal("a second delivery on P.A.SLOW ran beside the first")
	}
	if held := time.Since(took); held < 200*time.Millisecond {
		t.Errorf("a second delivery on P.A.SLOW gave up when the first had run %s, before the 200ms it was to wait", held)
	}
	// A delivery that has had P.A.SLOW longer than the next one is to wait
	// (an hour here) is not waited for at all.
	l.mu.Lock()
	since := l.locks["P.A.SLOW"].since
	l.locks["P.A.SLOW"].since = time.Now().Add(-2 * time.Hour)
	l.mu.Unlock()
	gaveUp := make(chan bool, 1)
	go func() {
		_, ok := l.lock(ctx, "P.A.SLOW", time.Hour)
		gaveUp <- !ok
	}()
	select {
	case ok := <-gaveUp:
		if !ok {
			t.Fatal("a second delivery on P.A.SLOW ran beside the first")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a delivery waits for one that has had the channel longer than it was to wait")
	}
	l.mu.Lock()
	l.locks["P.A.SLOW"].since = since
	l.mu.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, ok := l.lock(cctx, "P.A.SLOW", time.Minute); ok {
		t.Fatal("a delivery whose context ended got the busy lock")
	}

	second := make(chan func(), 1)
	go func() {
		if unlock, ok := l.lock(ctx, "P.A.SLOW", time.Minute); ok {
			second <- unlock
		}
	}()
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
