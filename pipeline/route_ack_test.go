package pipeline

import (
	"context"
	"strconv"
	"testing"

	"github.com/relay1c/relay/exchange"
)

// TestRouteDeadLetterStillAcknowledges: a message dead-lettered at route
// (its addressee has no deliver endpoint) is still its sender's, whose
// ReceivedNo acknowledges the reverse channel. Ingest returned at the dead
// letter before recording it: B → A showed acknowledged No 0 for ever, and
// the "no acknowledgement" alert fired after ack_alert_after (found by
// review).
func TestRouteDeadLetterStillAcknowledges(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out }, deliver: { dir: ./a/in } }
  B: { pickup: { dir: ./b/out } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup(), "B": newHandPickup()}})
	ctx := context.Background()
	// B → A: relay carried and delivered up to No 7.
	if _, err := p.States().Update(ctx, "P", "B", "A", func(c *Channel) {
		c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 7, 7, 7, 7
	}); err != nil {
		t.Fatal(err)
	}
	// A writes its message to B, acknowledging B's No 7.
	m := pickedUp("A", "B", 3, "<m/>")
	m.Metadata.Set(exchange.MetaReceivedNo, strconv.Itoa(7))
	if err := p.ingestHandler("A", "test", p.pushLane)(m); err != nil {
		t.Fatal(err)
	}
	if ls, err := p.Dead().List(ctx); err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v: want the route dead letter", ls, err)
	}
	c, err := p.States().Get(ctx, "P", "B", "A")
	if err != nil {
		t.Fatal(err)
	}
	if c.AckedNo != 7 {
		t.Fatalf("B → A acknowledged No %d after A's message with ReceivedNo 7, want 7", c.AckedNo)
	}
}

// TestUnknownAddresseeAcknowledgesNothing: a message to a node routing.yaml
// does not know is a dead letter; its ReceivedNo made a channel row from
// that node, which sends nothing through relay (found walking through the
// quick start).
func TestUnknownAddresseeAcknowledgesNothing(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out }, deliver: { dir: ./a/in } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup()}})
	ctx := context.Background()
	m := pickedUp("A", "X", 3, "<m/>")
	m.Metadata.Set(exchange.MetaReceivedNo, strconv.Itoa(7))
	if err := p.ingestHandler("A", "test", p.pushLane)(m); err != nil {
		t.Fatal(err)
	}
	chans, err := p.States().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chans {
		if c.From == "X" {
			t.Fatalf("a channel from the unknown node X: %+v", c)
		}
	}
	if len(chans) != 1 || chans[0].From != "A" || chans[0].To != "X" || chans[0].Dead != 1 {
		t.Fatalf("channels %+v: want A → X with its dead letter", chans)
	}
}
