package pipeline

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// namedSubscriber is newTestSubscriber with the consumer's name and the
// legacy one it takes over given.
func namedSubscriber(t *testing.T, nc *nats.Conn, node, durable, legacy string, in *inflight) *consumerSubscriber {
	t.Helper()
	s, err := newConsumerSubscriber(consumerSubscriberConfig{
		Conn:   nc,
		Stream: bus.StreamExchange,
		Consumer: jetstream.ConsumerConfig{
			Durable:       durable,
			FilterSubject: bus.DeliverSubjects(node),
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       time.Minute,
			MaxDeliver:    -1,
			MaxAckPending: maxHeld,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		},
		Legacy:       legacy,
		PullOptions:  deliveryPullOpts(),
		Unmarshaler:  stashUnmarshaler{in: in},
		CloseTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pipelineSubscriber is the pipeline's own delivery subscriber of node,
// taking the consumer of the old name over.
func pipelineSubscriber(t *testing.T, p *Pipeline, nc *nats.Conn, node string, in *inflight) message.Subscriber {
	t.Helper()
	s, err := p.deliverySubscriber(node, nc, in)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// drainFor handles what s offers, as the router does, for d.
func drainFor(t *testing.T, s message.Subscriber, handle func(*message.Message) error, d time.Duration) (handled int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := s.Subscribe(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	end := time.After(d)
	for {
		select {
		case m, ok := <-out:
			if !ok {
				return handled
			}
			handled++
			if err := handle(m); err != nil {
				m.Nack()
			} else {
				m.Ack()
			}
		case <-end:
			closeWithin(t, s, 10*time.Second)
			return handled
		}
	}
}

// TestTakeOverCountsResolvedOnce: a node's delivery consumer of the
// old name (deliver_<node>) is taken over by one named for the domain
// (bus.EnsureConsumer): the new one starts after the old one's ack floor.
// A sequential channel of the node holding a number for a gap keeps that
// floor low, while the node's other channel goes on: 20 messages
// delivered, counted, done. Taken over, all 20 are offered again, and
// were counted again (stale 19, duplicate 1, resolved 40 of 20 queued;
// pending read 20 short for good; found by review). The new consumer
// knows what the old one offered (bus.OfferedUpTo): such a record found
// resolved is acked uncounted.
func TestTakeOverCountsResolvedOnce(t *testing.T) {
	ctx := context.Background()
	d := &scriptedDelivery{}
	p, b, nc, in, handle := takeOverSite(t, "sequential", d)
	// OTH → DST: No 1 delivered long ago, No 3 waits for No 2 (a gap).
	if _, err := p.States().Update(ctx, "P", "OTH", "DST", func(c *Channel) { c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 1, 1, 1, 1 }); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "OTH", "DST", 3)
	for no := uint64(1); no <= 20; no++ {
		ingestNo(t, p, no)
	}
	legacy := bus.LegacyConsumerFor("deliver", "DST")

	// The version before: the consumer of the old name.
	drainFor(t, namedSubscriber(t, nc, "DST", legacy, "", in), handle, 3*time.Second)
	before, err := p.States().Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before: recent seqs %v", before.RecentSeqs)
	if before.Resolved != 20 || before.Queued != 20 || len(d.delivered()) != 20 {
		t.Fatalf("setup: resolved %d, queued %d, delivered %v", before.Resolved, before.Queued, d.delivered())
	}
	// This version starts: takes the old consumer over.
	drainFor(t, pipelineSubscriber(t, p, nc, "DST", in), handle, 3*time.Second)
	c, err := p.States().Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(d.delivered()); got != 20 {
		t.Fatalf("delivered %d times, want 20", got)
	}
	if c.Resolved != 20 || c.Stale != 0 || c.Duplicates != 0 {
		t.Fatalf("20 messages, each delivered once, then the consumer taken over: resolved %d (queued %d), stale %d, duplicates %d; want resolved 20, none stale: records resolved before, offered again by the new consumer, were counted a second time (pending now reads %d while it is %d short for good)",
			c.Resolved, c.Queued, c.Stale, c.Duplicates, c.Pending(), int64(c.Resolved)-int64(c.Queued))
	}
}

// TestTakeOverDeadTriedAgainRecorded: sequential channel, No 2
// died at delivery (the destination refused it), No 3 waits behind it.
// The consumer is taken over (another channel's gap holds the old
// consumer's ack floor below No 2): No 2 is offered again and, as README
// says, "tried once more" — the destination takes it now. finish
// returned early for a record whose stream sequence was among RecentSeqs
// (its death was written): the delivery was not recorded, and No 3 stayed
// held behind a dead letter whose message was delivered (found by review).
func TestTakeOverDeadTriedAgainRecorded(t *testing.T) {
	ctx := context.Background()
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 2 && attempt == 1 {
			return exchange.Permanent(errors.New("refused"))
		}
		return nil
	}}
	p, b, nc, in, handle := takeOverSite(t, "sequential", d)
	if _, err := p.States().Update(ctx, "P", "OTH", "DST", func(c *Channel) { c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 1, 1, 1, 1 }); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "OTH", "DST", 3)
	for no := uint64(1); no <= 3; no++ {
		ingestNo(t, p, no)
	}
	legacy := bus.LegacyConsumerFor("deliver", "DST")
	drainFor(t, namedSubscriber(t, nc, "DST", legacy, "", in), handle, 3*time.Second)
	before, _ := p.States().Get(ctx, "P", "SRC", "DST")
	if got := d.delivered(); !slices.Equal(got, []uint64{1}) || before.DeadNo != 2 {
		t.Fatalf("setup: delivered %v, dead No %d", got, before.DeadNo)
	}
	drainFor(t, pipelineSubscriber(t, p, nc, "DST", in), handle, 4*time.Second)
	c, _ := p.States().Get(ctx, "P", "SRC", "DST")
	got := d.delivered()
	if slices.Contains(got, 2) && (c.DeliveredNo < 2 || c.DeadNo == 2) {
		t.Fatalf("taken over, dead No 2 tried once more and taken by the destination (delivered %v), but the channel state says delivered No %d, dead No %d, last error %q: the delivery was not recorded (finish returned early: No 2's seq was among RecentSeqs), No 3 waits behind a dead letter of a delivered message",
			got, c.DeliveredNo, c.DeadNo, c.LastError)
	}
}

// TestStreamMadeAnewDeliveryRecorded: EXCHANGE is made anew under kept
// channel states: it counts from 1 again. finish returned early, writing
// nothing, for a record whose stream sequence the state listed: No 4 (new
// seq 1, listed from the old stream) was delivered and not recorded, so
// No 5 waited on the sequential channel "until No 4 arrives" for good
// (found by review). finish writes every outcome now.
func TestStreamMadeAnewDeliveryRecorded(t *testing.T) {
	ctx := context.Background()
	d := &scriptedDelivery{}
	p, b, nc, in, handle := takeOverSite(t, "sequential", d)
	for no := uint64(1); no <= 3; no++ {
		ingestNo(t, p, no)
	}
	drainFor(t, namedSubscriber(t, nc, "DST", bus.ConsumerName("r1", "DST"), "", in), handle, 2*time.Second)
	// The stream made anew: same config, counting from 1.
	info, err := b.Exchange.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.JS.DeleteStream(ctx, bus.StreamExchange); err != nil {
		t.Fatal(err)
	}
	if _, err := b.JS.CreateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	for no := uint64(4); no <= 5; no++ {
		ingestNo(t, p, no)
	}
	drainFor(t, namedSubscriber(t, nc, "DST", bus.ConsumerName("r1", "DST"), "", in), handle, 4*time.Second)
	c, _ := p.States().Get(ctx, "P", "SRC", "DST")
	if got := d.delivered(); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) || c.DeliveredNo != 5 {
		t.Fatalf("stream made anew, No 4 and 5 queued: destination got %v, state delivered No %d, resolved %d of %d, last error %q; want 1-5 delivered and recorded",
			got, c.DeliveredNo, c.Resolved, c.Queued, c.LastError)
	}
}

// takeOverSite is a pipeline with nodes SRC, OTH and DST (in mode), d
// delivering to DST, and DST's delivery handler run by hand on the
// inflight records of in.
func takeOverSite(t *testing.T, mode string, d *scriptedDelivery) (*Pipeline, *bus.Bus, *nats.Conn, *inflight, func(*message.Message) error) {
	t.Helper()
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  OTH: { deliver: { dir: ./oth } }
  DST: { mode: `+mode+`, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "OTH": &scriptedDelivery{}, "DST": d})
	in := &inflight{}
	return p, b, testConn(t, b), in, p.deliverHandler("DST", p.cfg.Nodes["DST"], d, p.laneOn(b, p.log), in)
}
