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

// The backoff between colliding writes ends with ctx: Update returns at
// once, with ctx's error, and writes no more.
func TestUpdateBackoffHonoursCtx(t *testing.T) {
	kv := &collidingKV{}
	s := NewStates(kv)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	began := time.Now()
	_, err := s.Update(ctx, "P", "A", "B", func(c *Channel) { c.Resolved++ })
	took := time.Since(began)
	if err == nil || !errors.Is(err, context.Canceled) && !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("Update: %v", err)
	}
	if took > 200*time.Millisecond {
		t.Fatalf("Update returned %s after its ctx ended at 30ms", took)
	}
	t.Logf("returned after %s, %d writes, err %v", took.Round(time.Millisecond), kv.writes.Load(), err)
}
