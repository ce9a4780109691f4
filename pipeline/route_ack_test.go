package pipeline

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

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
// does not know is a dead letter, or dropped at pickup when relay
// delivered its number before (the node taken out of routing.yaml since);
// its ReceivedNo made a channel row from that node, which sends nothing
// through relay (found walking through the quick start; the drop's found
// by review).
func TestUnknownAddresseeAcknowledgesNothing(t *testing.T) {
	for _, delivered := range []uint64{0, 3} {
		b := testBus(t)
		p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out }, deliver: { dir: ./a/in } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup()}})
		ctx := context.Background()
		if _, err := p.States().Update(ctx, "P", "A", "X", func(c *Channel) {
			c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = delivered, delivered, delivered, delivered
		}); err != nil {
			t.Fatal(err)
		}
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
				t.Fatalf("X delivered up to No %d: a channel from the unknown node X: %+v", delivered, c)
			}
		}
		if want := uint64(1 - delivered/3); len(chans) != 1 || chans[0].From != "A" || chans[0].To != "X" || chans[0].Dead != want {
			t.Fatalf("X delivered up to No %d: channels %+v, want A → X with %d dead letter(s)", delivered, chans, want)
		}
	}
}

// TestRouteDeadLetterTraceStartsAtPickup: a message dead-lettered at route
// was taken in (its payload kept for a retry): its trace says from where
// before it says why it died. It began at "dead", the pickup's node and
// adapter untold (found walking through the quick start).
func TestRouteDeadLetterTraceStartsAtPickup(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out }, deliver: { dir: ./a/in } }
  B: { pickup: { dir: ./b/out } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup(), "B": newHandPickup()}})
	ctx := context.Background()
	if err := p.ingestHandler("A", "dir", p.pushLane)(pickedUp("A", "B", 3, "<m/>")); err != nil {
		t.Fatal(err)
	}
	var steps []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(steps) < 2; time.Sleep(50 * time.Millisecond) {
		evs, err := p.Trace(ctx, TraceQuery{Match: "Message_A_B.xml"})
		if err != nil {
			t.Fatal(err)
		}
		steps = steps[:0]
		for _, e := range evs {
			steps = append(steps, e.Step+"@"+e.Node)
		}
	}
	if want := []string{StepPickedUp + "@A", StepDead + "@B"}; !slices.Equal(steps, want) {
		t.Fatalf("trace of a route dead letter: %v, want %v", steps, want)
	}
}

// TestPickupLetterKeepsHeaderRead: a file refused at pickup whose header
// read (its name contradicts it) makes a dead letter that carries that
// header (found walking through the quick start: `relay dead show` had
// no plan or numbers for it).
func TestPickupLetterKeepsHeaderRead(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out } }
  B: { deliver: { dir: ./b/in } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup()}})
	ctx := context.Background()
	m := pickedUp("A", "B", 4, "<m/>")
	m.Metadata.Set(exchange.MetaFileName, "Message_A_C.xml")
	m.Metadata.Set(exchange.MetaProblem, "exchange: file name contradicts header: file name says A_C but header says From A To B")
	if err := p.ingestHandler("A", "dir", p.pushLane)(m); err != nil {
		t.Fatal(err)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v: want one", ls, err)
	}
	if h := ls[0].Header; ls[0].Stage != StagePickup || h == nil || h.To != "B" || h.MessageNo != 4 {
		t.Fatalf("dead letter %+v (header %+v): want a pickup letter with the header read", ls[0], h)
	}
}
