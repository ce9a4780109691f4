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

// TestUpdateNotAppliedTwiceWhenAnswerLate: a state write the server applied
// but whose answer came too late (JetStream's 5 s API timeout; the caller's
// context still alive: ingest's, an API request's) is not applied again.
// Update retried on any error: the retry re-read the state, which held the
// change already, and applied fn on top again; Queued++ became +2 and the
// channel showed a message pending for ever (found by review).
func TestUpdateNotAppliedTwiceWhenAnswerLate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, _ := hubServer(t)
	hb, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hb.Close)

	px := startFreezeProxy(t, hub.Addr().String(), 0)
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
	s := NewStates(kv)
	if _, err := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.Queued = 1 }); err != nil {
		t.Fatal(err)
	}

	// The next write's answer is late by a little more than the API timeout.
	px.replies.Store(true)
	go func() { time.Sleep(5500 * time.Millisecond); px.replies.Store(false) }()
	calls := 0
	_, uerr := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { calls++; c.Queued++ })

	c, err := NewStates(hb.Channels).Get(ctx, "P", "SRC", "DST")
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
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, _ := hubServer(t)
	hb, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hb.Close)

	px := startFreezeProxy(t, hub.Addr().String(), 0)
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
	s := NewStates(kv)
	if _, err := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.Queued = 1 }); err != nil {
		t.Fatal(err)
	}

	px.replies.Store(true)
	other := NewStates(hb.Channels)
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
