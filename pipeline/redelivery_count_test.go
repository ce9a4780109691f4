package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// TestLostAckNotRecountedAfterNextResolved: a delivery whose ack is lost is
// offered again after AckWait, and acked without being counted again even
// when the channel resolved another message meanwhile (the normal case on a
// busy channel). Only LastMsgID was checked: it was counted a second time,
// as stale here (superseded on a latest channel), and pending showed 0
// while No 3 still waited (found by review).
func TestLostAckNotRecountedAfterNextResolved(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	d := &scriptedDelivery{}
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	ctx := context.Background()
	// Three messages taken in: No 1, 2, 3.
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 3, 3 }); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecord(t, b, "SRC", "DST", 2)
	queueRecord(t, b, "SRC", "DST", 3)

	in := &inflight{}
	nc := testConn(t, b)
	handle := p.deliverHandler("DST", p.cfg.Nodes["DST"], d, p.laneOn(b, p.log), in)

	// No 1 delivered and recorded; its ack is lost (subscriber gone).
	s1 := newTestSubscriber(t, nc, "DST", 2*time.Second, in)
	out, err := s1.Subscribe(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	m1 := receive(t, out, 10*time.Second)
	if err := handle(m1); err != nil {
		t.Fatal(err)
	}
	closeWithin(t, s1, 10*time.Second)

	// A new subscription: No 2 is offered and delivered (acked), then No 1
	// comes back after its AckWait.
	s := newTestSubscriber(t, nc, "DST", 2*time.Second, in)
	defer closeWithin(t, s, 10*time.Second)
	if out, err = s.Subscribe(ctx, ""); err != nil {
		t.Fatal(err)
	}
	handled := map[uint64]int{}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && (handled[1] == 0 || handled[2] == 0) {
		m := receive(t, out, 10*time.Second)
		hd, err := exchange.HeaderOf(m)
		if err != nil {
			t.Fatal(err)
		}
		h := hd.MessageNo
		if h == 3 { // leave No 3 waiting: nak it far away
			setNakDelay(m, time.Minute)
			m.Nack()
			continue
		}
		if err := handle(m); err != nil {
			t.Fatal(err)
		}
		m.Ack()
		handled[h]++
	}
	c, err := p.States().Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("delivered %v; state queued %d resolved %d stale %d duplicates %d superseded %d", d.delivered(), c.Queued, c.Resolved, c.Stale, c.Duplicates, c.Superseded)
	if c.Pending() != 1 || c.Stale != 0 || c.Duplicates != 0 {
		t.Fatalf("No 3 still waits, but pending %d (want 1), stale %d, duplicates %d (want 0): the redelivered No 1 was counted again", c.Pending(), c.Stale, c.Duplicates)
	}
}

// TestCrashBeforeCountCountedAtStart: a relay stopped between the publish
// of No 5 and its count; restarted, its pickup counted 1C's newer No 6
// first, and No 5, resolved later, was never counted: the channel showed
// one waiting fewer for good (found by review). The start counts it.
func TestCrashBeforeCountCountedAtStart(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	ctx := context.Background()
	eps := scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}}
	before := newPipeline(t, srcToSequentialDST, b, eps)
	if err := before.ingestHandler("SRC", "test", before.pushLane)(pickedUp("SRC", "DST", 4, "<message 4/>")); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 5) // published; the relay stopped before its count

	after := newPipeline(t, srcToSequentialDST, b, eps)
	after.countUncounted(ctx)
	after.countUncounted(ctx) // a second start counts nothing more
	if err := after.ingestHandler("SRC", "test", after.pushLane)(pickedUp("SRC", "DST", 6, "<message 6/>")); err != nil {
		t.Fatal(err)
	}
	c, err := after.States().Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued != 3 || c.Pending() != 3 || c.PickedNo != 6 {
		t.Fatalf("No 4, 5 (published before a stop, not counted) and 6 taken in: queued %d, pending %d, picked No %d; want 3, 3, 6", c.Queued, c.Pending(), c.PickedNo)
	}
}

// TestResolvedBeforeCountCountedAtStart: a relay stopped between the
// publish of a second No 5 (1C wrote No 5 again, other content) and its
// count, after its delivery had resolved it (its number not above the
// channel's picked-up one, so the delivery did not count it). 1C's newer
// No 6 replaced the file, so no pickup takes it again: the start counted
// only records not yet resolved, and the channel showed one waiting fewer
// for good. The start counts a record no count has seen, resolved or not.
func TestResolvedBeforeCountCountedAtStart(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	ctx := context.Background()
	eps := scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}}
	before := newPipeline(t, srcToSequentialDST, b, eps)
	if err := before.ingestHandler("SRC", "test", before.pushLane)(pickedUp("SRC", "DST", 5, "<message 5/>")); err != nil {
		t.Fatal(err)
	}
	again := storedRecord(t, b, "SRC", "DST", 5)
	_, seq, err := publishRecord(ctx, b.JS, bus.Subject("P", "SRC", "DST"), again)
	if err != nil {
		t.Fatal(err)
	}
	h, err := exchange.HeaderOf(again)
	if err != nil {
		t.Fatal(err)
	}
	// Resolved (stale: No 5 was there already) before its count.
	if err := before.laneOn(b, before.log).finish(ctx, h, seq, again.UUID, "", func(c *Channel) { c.Stale++ }); err != nil {
		t.Fatal(err)
	}

	after := newPipeline(t, srcToSequentialDST, b, eps)
	after.countUncounted(ctx)
	after.countUncounted(ctx) // a second start counts nothing more
	if err := after.ingestHandler("SRC", "test", after.pushLane)(pickedUp("SRC", "DST", 6, "<message 6/>")); err != nil {
		t.Fatal(err)
	}
	c, err := after.States().Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	// Waiting: the first No 5 and No 6.
	if c.Queued != 3 || c.Resolved != 1 || c.Pending() != 2 {
		t.Fatalf("two No 5 and No 6 taken in, the second No 5 resolved: queued %d, resolved %d, pending %d; want 3, 1, 2", c.Queued, c.Resolved, c.Pending())
	}
}
