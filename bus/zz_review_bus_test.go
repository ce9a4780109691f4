package bus

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/config"
)

// TestZZLeaseTTLLoweredByNewReplica: replicas share EXCHANGE_LEASES, but
// each renews its leases on its own relay.lease_ttl (every third of it,
// counting one lost only after two thirds). A replica started with a
// shorter lease_ttl (a rolling update that lowers it, or one replica
// configured differently) rewrites the bucket's MaxAge to its own TTL at
// Open, so a lease the running replica still counts as held — written
// 3 s ago, next renewal due at 10 s — lapses on the server and the new
// replica takes it: two replicas hold the same lease.
func TestZZLeaseTTLLoweredByNewReplica(t *testing.T) {
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

// TestZZEmbeddedJetStreamOffNotNoticed: the embedded nats-server turns
// JetStream off for good when its store fails under it — out of space
// (server/jetstream.go handleOutOfSpace, stream.go "JetStream out of space,
// will be DISABLED") or a write refused by the file system (stream.go,
// filestore.go: ShutdownJetStream). From then on every put, publish and
// read fails until the process restarts, even after the disk is freed. The
// bus still says Connected (so /readyz answers 200) and Lost stays open (so
// `relay run` does not exit for its service manager to restart it): the
// relay looks alive and moves nothing — what Lost exists to prevent for an
// external NATS.
func TestZZEmbeddedJetStreamOffNotNoticed(t *testing.T) {
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
