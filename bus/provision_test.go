package bus

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestOpenKeepsBucketsInStep: a start with another lease TTL brings the
// existing lease bucket to it (expiry and duplicate window), and on one
// server every bucket keeps its direct gets.
func TestOpenKeepsBucketsInStep(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, ttl := range []time.Duration{10 * time.Second, 20 * time.Second, 5 * time.Minute} {
		b, err := Open(ctx, Settings{DataDir: dir, ID: "t", LeaseTTL: ttl}, log)
		if err != nil {
			t.Fatal(err)
		}
		st, err := b.JS.Stream(ctx, "KV_"+BucketLeases)
		if err != nil {
			b.Close()
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		wantDup := min(ttl, 2*time.Minute)
		if cfg.MaxAge != ttl || cfg.Duplicates != wantDup {
			t.Errorf("lease TTL %s: bucket MaxAge %s, Duplicates %s; want %s, %s", ttl, cfg.MaxAge, cfg.Duplicates, ttl, wantDup)
		}
		for _, name := range []string{"KV_" + BucketChannels, "KV_" + BucketTaken, "KV_" + BucketLeases, "OBJ_" + BucketPayloads} {
			s, err := b.JS.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if c := s.CachedInfo().Config; !c.AllowDirect || c.Replicas != 1 {
				t.Errorf("%s: AllowDirect %v, Replicas %d on one server; want true, 1", name, c.AllowDirect, c.Replicas)
			}
		}
		if _, err := b.Leases.Put(ctx, "k", []byte("v")); err != nil {
			t.Errorf("lease bucket after a start with TTL %s: %v", ttl, err)
		}
		b.Close()
	}
}

// TestOpenLiftsPayloadAgeLimit: an age limit on the payload bucket (an
// operator's `nats stream edit`) would drop the bodies of messages still
// waiting; a start removes it, and makes a size limit refuse new payloads
// instead of discarding old ones.
func TestOpenLiftsPayloadAgeLimit(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := Open(ctx, Settings{DataDir: dir, ID: "t"}, log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.JS.Stream(ctx, "OBJ_"+BucketPayloads)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxAge, cfg.MaxBytes, cfg.Discard = time.Hour, 1<<30, jetstream.DiscardOld
	if _, err := b.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if b, err = Open(ctx, Settings{DataDir: dir, ID: "t"}, log); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st, err = b.JS.Stream(ctx, "OBJ_"+BucketPayloads); err != nil {
		t.Fatal(err)
	}
	if c := st.CachedInfo().Config; c.MaxAge != 0 || c.Discard != jetstream.DiscardNew || c.MaxBytes != 1<<30 {
		t.Errorf("payload bucket after a start: MaxAge %s, Discard %s, MaxBytes %d; want 0, DiscardNew, the operator's %d", c.MaxAge, c.Discard, c.MaxBytes, 1<<30)
	}
}

// TestOpenDeadLettersRememberIDs: a dead letter's Nats-Msg-Id is its
// record's, so that the record offered again after a lost ack makes no
// second letter; the server's default window (2 minutes) was shorter than
// a relay or an office link down for an hour (found by review). A start
// brings an existing stream to the window.
func TestOpenDeadLettersRememberIDs(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for start := range 2 {
		b, err := Open(ctx, Settings{DataDir: dir, ID: "t"}, log)
		if err != nil {
			t.Fatal(err)
		}
		info, err := b.Dead.Info(ctx)
		if err != nil {
			b.Close()
			t.Fatal(err)
		}
		if got := info.Config.Duplicates; got != DuplicateWindow {
			t.Errorf("start %d: %s duplicate window %s, want %s", start+1, StreamDead, got, DuplicateWindow)
		}
		cfg := info.Config
		cfg.Duplicates = 2 * time.Minute // as a relay before this made it
		if _, err := b.JS.UpdateStream(ctx, cfg); err != nil {
			t.Error(err)
		}
		b.Close()
	}
}
