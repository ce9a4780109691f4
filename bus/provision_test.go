package bus

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/config"
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

// TestLeaseTTLNeverShortenedByNewReplica: replicas share EXCHANGE_LEASES, but
// each renews its leases on its own relay.lease_ttl (every third of it,
// counting one lost only after two thirds). A replica started with a
// shorter lease_ttl (a rolling update that lowers it, or one replica
// configured differently) rewrote the bucket's MaxAge to its own TTL at
// Open, so that a lease the running replica still counts as held — written
// 3 s ago, next renewal due at 10 s — lapsed on the server and the new
// replica took it: two replicas held the same lease (found by review). A
// start never shortens the bucket's TTL now.
func TestLeaseTTLNeverShortenedByNewReplica(t *testing.T) {
	ns := quietServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	a, err := Open(ctx, Settings{NATS: config.NATS{URL: ns.ClientURL()}, ID: "hq", LeaseTTL: 30 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Replica A takes the pickup lease (what pipeline's leases.try does).
	if _, err := a.Leases.Create(ctx, "pickup.SHOP1", []byte("replica-a")); err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	// Replica B starts with lease_ttl 1s.
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: ns.ClientURL()}, ID: "hq", LeaseTTL: time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	time.Sleep(3 * time.Second)
	// A renews every 10 s and counts its lease lost only 20 s after its
	// last renewal was sent: it holds the lease now.
	if since := time.Since(taken); since >= 10*time.Second {
		t.Skipf("test too slow: %s", since)
	}
	_, err = b.Leases.Create(ctx, "pickup.SHOP1", []byte("replica-b"))
	if !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("replica B took the lease replica A holds (A's lease_ttl 30s, taken %s ago, not yet due for renewal): Create = %v", time.Since(taken).Round(time.Millisecond), err)
	}
}

// TestEmbeddedJetStreamOffLost: the embedded nats-server turns
// JetStream off for good when its store fails under it — out of space
// (server/jetstream.go handleOutOfSpace, stream.go "JetStream out of space,
// will be DISABLED") or a write refused by the file system (stream.go,
// filestore.go: ShutdownJetStream). From then on every put, publish and
// read fails until the process restarts, even after the disk is freed. The
// bus still said Connected (so /readyz answered 200) and Lost stayed open
// (so `relay run` did not exit for its service manager to restart it): the
// relay looked alive and moved nothing (found by review). Lost closes now.
func TestEmbeddedJetStreamOffLost(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// What the server does itself on ENOSPC / EACCES in its store.
	if err := b.server.ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	// Nothing moves any more.
	if _, _, err := b.PutPayload(ctx, "p/a/b/1/x", 3, strings.NewReader("abc")); err == nil {
		t.Fatal("put succeeded with JetStream off")
	}
	if _, err := b.JS.Publish(ctx, Subject("P", "A", "B"), []byte("r")); err == nil {
		t.Fatal("publish succeeded with JetStream off")
	}
	select {
	case <-b.Lost():
		return
	case <-time.After(5 * time.Second):
	}
	if b.Connected() {
		t.Fatalf("JetStream is off on the embedded server for good, yet Connected() = true (readyz 200) and Lost() never closes: relay runs on, moving nothing")
	}
}

// TestOpenSync: nats.sync reaches the embedded server: always flushes the
// store before each acknowledgement, a duration sets how often it is
// flushed (a power loss loses what was written since).
func TestOpenSync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		sync   string
		always bool
		every  time.Duration
	}{
		{"", false, 2 * time.Minute},
		{"always", true, 2 * time.Minute},
		{"10s", false, 10 * time.Second},
	} {
		b, err := Open(ctx, Settings{DataDir: t.TempDir(), ID: "t", NATS: config.NATS{Sync: tc.sync}}, log)
		if err != nil {
			t.Fatal(err)
		}
		js := b.server.JetStreamConfig()
		b.Close()
		if js == nil || js.SyncAlways != tc.always || js.SyncInterval != tc.every {
			t.Errorf("sync %q: server's JetStream config %+v, want always %v every %s", tc.sync, js, tc.always, tc.every)
		}
	}
}
