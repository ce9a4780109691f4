package main

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// overlapKV wraps the floor's state bucket: every write takes rtt (a round
// trip) and the most writes ever in flight at once is recorded.
type overlapKV struct {
	jetstream.KeyValue
	rtt time.Duration

	mu             sync.Mutex
	inflight, most int
	writes         int
}

func (k *overlapKV) enter() {
	k.mu.Lock()
	k.inflight++
	k.writes++
	k.most = max(k.most, k.inflight)
	k.mu.Unlock()
	time.Sleep(k.rtt)
	k.mu.Lock()
	k.inflight--
	k.mu.Unlock()
}

func (k *overlapKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	k.enter()
	return k.KeyValue.Create(ctx, key, value, opts...)
}

func (k *overlapKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	k.enter()
	return k.KeyValue.Update(ctx, key, value, rev)
}

// TestFloorIngestStateWritesTogether: the floor does each contract step
// the cheapest way known. The relay writes the ingest's two channel states
// (the channel's own, and the reverse channel's acknowledgement) in one
// round trip, concurrently (pipeline/ingest.go); so must the floor, or it
// pays one round trip more per message on the producer's critical path
// and FLOOR/BASELINE reads low, RELAY/FLOOR high.
func TestFloorIngestStateWritesTogether(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true, DontListen: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	fl, err := newFloor(ctx, js, js)
	if err != nil {
		t.Fatal(err)
	}
	kv := &overlapKV{KeyValue: fl.inState, rtt: 150 * time.Millisecond}
	fl.inState = kv

	w, err := newWorkload(2, 1, 1024)
	if err != nil {
		t.Fatal(err)
	}
	c := w.channels[0]
	m := c.msgs[1] // No 2, ReceivedNo 1: acknowledges something new
	path := filepath.Join(t.TempDir(), c.name())
	if err := os.WriteFile(path, m.data, 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := fl.ingest(ctx, path, c); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if kv.writes != 2 {
		t.Fatalf("floor ingest wrote %d states, want 2 (picked + acked)", kv.writes)
	}
	if kv.most < 2 {
		t.Errorf("floor ingest wrote its 2 channel states one after the other (at most %d in flight; %s with a %s round trip each); the relay writes them together", kv.most, took.Round(time.Millisecond), kv.rtt)
	}
}
