package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
)

const testLeaseTTL = time.Second

func testLeases(t *testing.T) (a, b *leases) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bb, err := bus.Open(ctx, bus.Settings{DataDir: t.TempDir(), ID: "test", LeaseTTL: testLeaseTTL}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bb.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &leases{kv: bb.Leases, owner: "a", ttl: testLeaseTTL, log: log},
		&leases{kv: bb.Leases, owner: "b", ttl: testLeaseTTL, log: log}
}

func TestLeaseExclusiveAndReleased(t *testing.T) {
	t.Parallel()
	a, b := testLeases(t)
	ctx := context.Background()
	la, err := a.try(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	// Held well past its TTL: renewal keeps it.
	time.Sleep(2 * testLeaseTTL)
	if _, err := b.try(ctx, "k"); !errors.Is(err, errLeaseHeld) {
		t.Fatalf("second holder: err %v, want errLeaseHeld", err)
	}
	if la.Context().Err() != nil {
		t.Fatal("renewed lease reported lost")
	}
	la.Release()
	lb, err := b.try(ctx, "k")
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	lb.Release()
}

func TestLeaseOfDeadHolderLapses(t *testing.T) {
	t.Parallel()
	a, b := testLeases(t)
	ctx := context.Background()
	// A holder that dies: it took the key and never renews.
	if _, err := a.kv.Create(ctx, "k", []byte("dead")); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	hctx, cancel := context.WithTimeout(ctx, 10*testLeaseTTL)
	defer cancel()
	l, err := b.hold(hctx, "k")
	if err != nil {
		t.Fatalf("lease of a dead holder never lapsed: %v", err)
	}
	defer l.Release()
	if waited := time.Since(t0); waited < testLeaseTTL/2 {
		t.Fatalf("taken after %s, before the dead holder's TTL", waited)
	}
}

func TestLeaseRetakenBySameHolder(t *testing.T) {
	a, _ := testLeases(t)
	ctx := context.Background()
	// The same instance restarted: its old lease is still there.
	if _, err := a.kv.Create(ctx, "k", []byte(a.owner)); err != nil {
		t.Fatal(err)
	}
	l, err := a.try(ctx, "k")
	if err != nil {
		t.Fatalf("own lease not retaken: %v", err)
	}
	l.Release()
}

func TestLeaseLostWhenTaken(t *testing.T) {
	a, _ := testLeases(t)
	ctx := context.Background()
	l, err := a.try(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	// Someone else writes the key (as after a lapse): the holder notices.
	if _, err := a.kv.Put(ctx, "k", []byte("other")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Context().Done():
	case <-time.After(3 * testLeaseTTL):
		t.Fatal("lease not reported lost after another holder took it")
	}
}

// fakePickup emits numbered messages until its context ends.
type fakePickup struct {
	name   string
	sent   *atomic.Int64
	closed atomic.Bool
}

func (f *fakePickup) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		for {
			m := message.NewMessage(f.name, nil)
			select {
			case out <- m:
				f.sent.Add(1)
			case <-ctx.Done():
				return
			}
			select {
			case <-m.Acked():
			case <-m.Nacked():
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (f *fakePickup) Close() error { f.closed.Store(true); return nil }

func TestLeasedPickupFailsOver(t *testing.T) {
	a, b := testLeases(t)
	var sentA, sentB atomic.Int64
	pa := newLeasedPickup(a, "pickup.N", func() (message.Subscriber, error) { return &fakePickup{name: "a", sent: &sentA}, nil }, a.log)
	pb := newLeasedPickup(b, "pickup.N", func() (message.Subscriber, error) { return &fakePickup{name: "b", sent: &sentB}, nil }, b.log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outA, _ := pa.Subscribe(ctx, "N")
	// a holds the lease before b asks.
	first := <-outA
	if first.UUID != "a" {
		t.Fatalf("first message from %q", first.UUID)
	}
	first.Ack()
	outB, _ := pb.Subscribe(ctx, "N")
	got := map[string]int{}
	deadline := time.After(5 * testLeaseTTL)
	for got["a"] < 5 {
		select {
		case m := <-outA:
			got[m.UUID]++
			m.Ack()
		case m := <-outB:
			t.Fatalf("standby replica emitted %q while the holder runs", m.UUID)
		case <-deadline:
			t.Fatalf("holder stalled: %v", got)
		}
	}
	// The holder stops; the standby takes over.
	go pa.Close()
	for m := range outA {
		m.Nack()
	}
	select {
	case m := <-outB:
		if m.UUID != "b" {
			t.Fatalf("after failover got %q", m.UUID)
		}
		m.Ack()
	case <-time.After(5 * testLeaseTTL):
		t.Fatal("standby never took over")
	}
	pb.Close()
}

func TestPullsSharedBetweenReplicas(t *testing.T) {
	t.Parallel()
	a, b := testLeases(t)
	polledA, elsewhereA := a.pulls("M")
	_, elsewhereB := b.pulls("M")
	if elsewhereB() {
		t.Fatal("node pulls elsewhere before it pulled at all")
	}
	polledA()
	time.Sleep(1100 * time.Millisecond) // past B's one-second cache
	if !elsewhereB() {
		t.Fatal("replica b does not see that the node pulls from a")
	}
	if elsewhereA() {
		t.Fatal("replica a thinks the node pulls elsewhere")
	}
	// The node stops pulling: the record lapses with the lease TTL.
	time.Sleep(testLeaseTTL + 1100*time.Millisecond)
	if elsewhereB() {
		t.Fatal("the record of the node's pulls did not lapse")
	}
}

// leasedPickup keeps why its last term's adapter did not start "until a
// term starts or another replica has held the lease for a whole TTL (it
// runs the pickup then)". The second half is only checked once hold
// returns, i.e. once this replica holds the lease again: while the other
// replica runs the pickup (for good), this standby replica keeps showing
// "pickup not started: ..." as the node's pickup error (found by review).
func TestLeasedPickupStartErrorClearedOnStandby(t *testing.T) {
	t.Parallel()
	a, b := testLeases(t)
	var sentB atomic.Int64
	pa := newLeasedPickup(a, "pickup.N", func() (message.Subscriber, error) { return failingPickup{}, nil }, a.log)
	pb := newLeasedPickup(b, "pickup.N", func() (message.Subscriber, error) { return &fakePickup{name: "b", sent: &sentB}, nil }, b.log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outA, _ := pa.Subscribe(ctx, "N")
	go func() {
		for m := range outA {
			m.Nack()
		}
	}()
	defer pa.Close()
	// a took the lease first and failed to start.
	for deadline := time.Now().Add(5 * testLeaseTTL); ; time.Sleep(20 * time.Millisecond) {
		if msg, _ := pa.LastError(); msg != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("setup: a never tried")
		}
	}
	outB, _ := pb.Subscribe(ctx, "N")
	go func() {
		for m := range outB {
			m.Ack()
		}
	}()
	defer pb.Close()
	// b runs the pickup from now on (it holds the lease while it runs).
	time.Sleep(5 * testLeaseTTL)
	if sentB.Load() == 0 {
		t.Fatal("setup: b never ran the pickup")
	}
	if msg, _ := pa.LastError(); msg != "" {
		t.Fatalf("replica b has run the pickup for %s (5 TTLs), yet standby a still reports %q", 5*testLeaseTTL, msg)
	}
}
