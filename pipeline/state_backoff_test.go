package pipeline

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// collidingKV answers every compare-and-set with a mismatch (another
// writer always first) and honours ctx in Get, as the real bucket does.
type collidingKV struct {
	jetstream.KeyValue
	writes atomic.Int64
}

func (k *collidingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, jetstream.ErrKeyNotFound
}

func (k *collidingKV) Create(ctx context.Context, key string, value []byte, _ ...jetstream.KVCreateOpt) (uint64, error) {
	k.writes.Add(1)
	return 0, jetstream.ErrKeyExists
}

// The backoff between colliding writes ends with ctx: Update returns with
// ctx's error and writes no more, though the backoff's timer never fires.
func TestUpdateBackoffHonoursCtx(t *testing.T) {
	kv := &collidingKV{}
	s := NewStates(kv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	backoffs := 0
	s.after = func(time.Duration) <-chan time.Time {
		if backoffs++; backoffs < 3 {
			fired := make(chan time.Time, 1)
			fired <- time.Time{}
			return fired
		}
		cancel()
		return nil // never fires
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Update(ctx, "P", "A", "B", func(c *Channel) { c.Resolved++ })
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) && !errors.Is(err, jetstream.ErrKeyExists) {
			t.Fatalf("Update: %v, want ctx's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Update still waits in its backoff after its ctx ended")
	}
	// Tries 0, 1 and 2 at once, a backoff after each from try 2 on: the
	// third backoff (after try 4) is the one ctx ends.
	if n := kv.writes.Load(); n != 5 {
		t.Errorf("%d writes, want 5: none after the backoff ctx ended", n)
	}
}
