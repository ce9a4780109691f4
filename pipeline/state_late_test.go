package pipeline

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
)

// lateAnswers is a channel state (P: SRC → DST, queued 1) on a NATS
// reached two ways: s through px, a proxy that can hold the server's
// answers back, and other directly.
func lateAnswers(t *testing.T) (s, other *States, px *freezeProxy) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, _ := hubServer(t)
	hb, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hb.Close)
	px = startFreezeProxy(t, hub.Addr().String(), 0)
	nc, err := nats.Connect("nats://" + px.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.replies.Store(false); nc.Close() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketChannels)
	if err != nil {
		t.Fatal(err)
	}
	s = NewStates(kv)
	if _, err := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.Queued = 1 }); err != nil {
		t.Fatal(err)
	}
	return s, NewStates(hb.Channels), px
}

// TestUpdateNotAppliedTwiceWhenAnswerLate: a state write the server applied
// but whose answer came too late (JetStream's 5 s API timeout; the caller's
// context still alive: ingest's, an API request's) is not applied again.
// Update retried on any error: the retry re-read the state, which held the
// change already, and applied fn on top again; Queued++ became +2 and the
// channel showed a message pending for ever (found by review).
func TestUpdateNotAppliedTwiceWhenAnswerLate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, other, px := lateAnswers(t)

	// The next write's answer is late by a little more than the API timeout.
	px.replies.Store(true)
	go func() { time.Sleep(5500 * time.Millisecond); px.replies.Store(false) }()
	calls := 0
	_, uerr := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { calls++; c.Queued++ })

	c, err := other.Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued != 2 {
		t.Fatalf("one Queued++ (Update returned %v, fn called %d times) left queued %d, want 2", uerr, calls, c.Queued)
	}
}

// TestUpdateLateAnswerWithAnotherWriter: as above, and another writer
// (the ingest beside a delivery, another replica) changes the channel while
// the answer is late. The stored value is then not the late write's, yet
// holds it: comparing values applied Queued++ a second time.
func TestUpdateLateAnswerWithAnotherWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, other, px := lateAnswers(t)

	px.replies.Store(true)
	go func() {
		// Once the late write is stored, the other writer changes the
		// channel on top of it, then the answers flow again.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if c, err := other.Get(ctx, "P", "SRC", "DST"); err == nil && c.Queued == 2 {
				if _, err := other.Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.Stale++ }); err != nil {
					t.Error(err)
				}
				break
			}
		}
		time.Sleep(5500 * time.Millisecond)
		px.replies.Store(false)
	}()
	calls := 0
	got, uerr := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { calls++; c.Queued++ })

	c, err := other.Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued != 2 || c.Stale != 1 {
		t.Fatalf("one Queued++ beside another writer's Stale++ (Update returned %v, fn called %d times) left queued %d stale %d, want 2 and 1", uerr, calls, c.Queued, c.Stale)
	}
	if uerr != nil || got.Queued != 2 || got.Stale != 1 {
		t.Fatalf("Update returned %+v, %v: want the stored state (queued 2, stale 1)", got, uerr)
	}
}

// lossyKV wraps a real bucket and scripts lost answers.
type lossyKV struct {
	jetstream.KeyValue
	// onUpdate is called for each Update; it returns (handled, rev, err).
	onUpdate func(ctx context.Context, key string, v []byte, last uint64) (bool, uint64, error)
	// onGet likewise for Get.
	onGet func(ctx context.Context, key string) (bool, jetstream.KeyValueEntry, error)
}

func (k *lossyKV) Update(ctx context.Context, key string, v []byte, last uint64) (uint64, error) {
	if k.onUpdate != nil {
		if ok, rev, err := k.onUpdate(ctx, key, v, last); ok {
			return rev, err
		}
	}
	return k.KeyValue.Update(ctx, key, v, last)
}

func (k *lossyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if k.onGet != nil {
		if ok, e, err := k.onGet(ctx, key); ok {
			return e, err
		}
	}
	return k.KeyValue.Get(ctx, key)
}

// TestUpdateLostAnswerThenLookupFails: the write is applied, its answer
// lost, and the one look-up Update made for its id failed too (the same
// slow NATS). The next attempt re-read the state — which held the write —
// and applied fn on top of it: Queued++ counted twice (found by review).
func TestUpdateLostAnswerThenLookupFails(t *testing.T) {
	ctx := context.Background()
	s, kv, direct := lossyStates(t)
	var updates, gets int
	kv.onUpdate = func(ctx context.Context, key string, v []byte, last uint64) (bool, uint64, error) {
		updates++
		if updates == 1 {
			_, err := kv.KeyValue.Update(ctx, key, v, last) // applied...
			if err != nil {
				t.Fatal(err)
			}
			return true, 0, nats.ErrTimeout // ...answer lost
		}
		return false, 0, nil
	}
	kv.onGet = func(ctx context.Context, key string) (bool, jetstream.KeyValueEntry, error) {
		gets++
		if gets == 1 {
			return true, nil, nats.ErrTimeout // the look-up's answer lost too
		}
		return false, nil, nil
	}
	calls := 0
	got, uerr := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { calls++; c.Queued++ })
	c, err := direct.Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued != 2 || uerr != nil {
		t.Fatalf("one Queued++ whose answer was lost left queued %d, want 2 (Update returned queued %d, err %v; fn called %d times): an error would have its caller do it again", c.Queued, got.Queued, uerr, calls)
	}
}

// TestUpdateLateWriteLandsAfterLookup: the write's answer is lost and the
// write lands late, after the look-up saw the old revision. The retry's CAS
// then failed on the late write's revision, and the next attempt re-read a
// state holding the first attempt's id — and applied fn again (found by
// review).
func TestUpdateLateWriteLandsAfterLookup(t *testing.T) {
	ctx := context.Background()
	s, kv, direct := lossyStates(t)
	var late []byte
	var lateRev uint64
	updates := 0
	kv.onUpdate = func(ctx context.Context, key string, v []byte, last uint64) (bool, uint64, error) {
		updates++
		switch updates {
		case 1: // held by a slow server, answer lost
			late, lateRev = v, last
			return true, 0, nats.ErrTimeout
		case 2: // the held write lands just before the retry's CAS
			if _, err := kv.KeyValue.Update(ctx, key, late, lateRev); err != nil {
				t.Fatal(err)
			}
		}
		return false, 0, nil
	}
	calls := 0
	got, uerr := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { calls++; c.Queued++ })
	c, err := direct.Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued != 2 {
		t.Fatalf("one Queued++ whose write landed late left queued %d, want 2 (Update returned queued %d, err %v; fn called %d times)", c.Queued, got.Queued, uerr, calls)
	}
}

// lossyStates is a channel state (P: SRC → DST, queued 1) written through
// kv, whose answers a test can script, and read directly through direct.
func lossyStates(t *testing.T) (s *States, kv *lossyKV, direct *States) {
	t.Helper()
	b := testBus(t)
	kv = &lossyKV{KeyValue: b.Channels}
	s = NewStates(kv)
	if _, err := s.Update(context.Background(), "P", "SRC", "DST", func(c *Channel) { c.Queued = 1 }); err != nil {
		t.Fatal(err)
	}
	return s, kv, NewStates(b.Channels)
}
