package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

func TestApplyAck(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Hour)
	c := Channel{Plan: "P", From: "B", To: "A", PickedNo: 7, DeliveredNo: 7}
	c.applyAck(5, t0)
	if c.AckedNo != 5 || !c.LastAckAt.Equal(t0) || c.Warning != "" {
		t.Fatalf("ack 5: %+v", c)
	}
	c.applyAck(3, t1) // an older ReceivedNo never moves the number back
	if c.AckedNo != 5 || !c.LastAckAt.Equal(t0) {
		t.Fatalf("ack 3 after 5: %+v", c)
	}
	c.applyAck(9, t1) // more than relay ever carried: B went back in time
	if c.AckedNo != 9 || !strings.Contains(c.Warning, "restored from a backup") || !c.WarningAt.Equal(t1) {
		t.Fatalf("ack 9 of 7 carried: %+v", c)
	}
	c.applyAck(9, t1.Add(time.Hour)) // still so: the first time stays
	if !c.WarningAt.Equal(t1) {
		t.Fatalf("warning time moved: %+v", c)
	}
	c.PickedNo, c.DeliveredNo = 10, 10 // B sends on; the numbers agree again
	c.applyAck(10, t1.Add(2*time.Hour))
	if c.Warning != "" || !c.WarningAt.IsZero() {
		t.Fatalf("warning not cleared: %+v", c)
	}
	fresh := Channel{From: "B", To: "A"} // relay never carried B→A: nothing to compare
	fresh.applyAck(40, t0)
	if fresh.Warning != "" || fresh.AckedNo != 40 {
		t.Fatalf("fresh channel: %+v", fresh)
	}
}

// TestAheadWarningFollowsPickups: the warning that a node acknowledged more
// than relay carried names what relay carried; each pickup of the channel
// keeps that number current, and the one that reaches the acknowledged
// number clears it. It kept the number of the day it was raised until
// the node's next acknowledgement (found walking through the quick
// start).
func TestAheadWarningFollowsPickups(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { deliver: { dir: ./a/in } }
  B: { pickup: { dir: ./b/out } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"B": newHandPickup()}})
	ctx := context.Background()
	if _, err := p.States().Update(ctx, "P", "B", "A", func(c *Channel) {
		c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 7, 7, 7, 7
		c.applyAck(9, time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		no   uint64
		want string
	}{{8, "relay carried only up to No 8:"}, {9, ""}} {
		if err := p.ingestHandler("B", "test", p.pushLane)(pickedUp("B", "A", step.no, "<m/>")); err != nil {
			t.Fatal(err)
		}
		c, err := p.States().Get(ctx, "P", "B", "A")
		if err != nil {
			t.Fatal(err)
		}
		if step.want == "" && c.Warning != "" || !strings.Contains(c.Warning, step.want) {
			t.Fatalf("after No %d picked up, A having acknowledged No 9: warning %q, want %q", step.no, c.Warning, step.want)
		}
	}
}

// Recent answers from what this relay last read or wrote; only a channel it
// has not seen yet costs a read. Get always reads.
func TestStatesRecent(t *testing.T) {
	b := testBus(t)
	ctx := context.Background()
	s := NewStates(b.Channels)
	key := bus.ChannelKey("P", "A", "B")

	// Written elsewhere before this relay saw the channel: read.
	raw, _ := json.Marshal(Channel{DeliveredNo: 3})
	if _, err := b.Channels.Put(ctx, key, raw); err != nil {
		t.Fatal(err)
	}
	c, err := s.Recent(ctx, "P", "A", "B")
	if err != nil || c.DeliveredNo != 3 || c.Plan != "P" || c.From != "A" || c.To != "B" {
		t.Fatalf("first Recent = %+v, %v; want DeliveredNo 3 with names", c, err)
	}
	if _, err := s.Update(ctx, "P", "A", "B", func(c *Channel) { c.DeliveredNo = 5 }); err != nil {
		t.Fatal(err)
	}
	// Moved on behind this relay's back: Recent still says 5, a lower
	// bound; Get reads 9.
	raw, _ = json.Marshal(Channel{DeliveredNo: 9})
	if _, err := b.Channels.Put(ctx, key, raw); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Recent(ctx, "P", "A", "B"); err != nil || c.DeliveredNo != 5 {
		t.Fatalf("Recent after own update = %+v, %v; want DeliveredNo 5", c, err)
	}
	if c, err := s.Get(ctx, "P", "A", "B"); err != nil || c.DeliveredNo != 9 {
		t.Fatalf("Get = %+v, %v; want DeliveredNo 9", c, err)
	}
	if c, err := s.Recent(ctx, "P", "A", "B"); err != nil || c.DeliveredNo != 9 {
		t.Fatalf("Recent after Get = %+v, %v; want DeliveredNo 9", c, err)
	}
}

// TestAcknowledgeWritesOnlyChanges: a ReceivedNo that acknowledges nothing
// new (1C repeats it in every message) writes nothing, state or trace
// event; one that moves the number, raises or clears the backup warning
// does both.
func TestAcknowledgeWritesOnlyChanges(t *testing.T) {
	b := testBus(t)
	ctx := context.Background()
	l := &lane{b: b, states: NewStates(b.Channels), log: slog.New(slog.DiscardHandler)}
	key := bus.ChannelKey("P", "B", "A") // acknowledged by A's messages to B
	rev := func() uint64 {
		e, err := b.Channels.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	ack := func(no uint64) Channel {
		l.acknowledge(ctx, exchange.Header{ExchangePlan: "P", From: "A", To: "B", MessageNo: 1, ReceivedNo: no}, time.Now(), "id", "file")
		c, err := l.states.Get(ctx, "P", "B", "A")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if _, err := l.states.Update(ctx, "P", "B", "A", func(c *Channel) { c.PickedNo = 3 }); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		no     uint64
		before func()
		write  bool
		check  func(c Channel) bool
	}{
		{no: 2, write: true, check: func(c Channel) bool { return c.AckedNo == 2 }},
		{no: 2, write: false},
		{no: 1, write: false, check: func(c Channel) bool { return c.AckedNo == 2 }},
		{no: 3, write: true, check: func(c Channel) bool { return c.AckedNo == 3 }},
		{no: 9, write: true, check: func(c Channel) bool { return c.AckedNo == 9 && c.Warning != "" }},
		{no: 9, write: false},
		// Relay carried No 10 since: the write that said so cleared the
		// warning, and the same ReceivedNo again changes nothing.
		{no: 9, write: false, check: func(c Channel) bool { return c.Warning == "" }, before: func() {
			if _, err := l.states.Update(ctx, "P", "B", "A", func(c *Channel) { c.PickedNo = 10 }); err != nil {
				t.Fatal(err)
			}
		}},
	}
	// Trace events are plain publishes, stored after the call returns: a
	// marker event after each step, once stored, says all before it are.
	events := func(i int) uint64 {
		marker := fmt.Sprint("marker ", i)
		l.event(Event{Step: "marker", MsgID: marker})
		sum := sha256.Sum256([]byte(marker))
		subj := bus.EventSubjectPrefix + hex.EncodeToString(sum[:12])
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := b.Events.GetLastMsgForSubject(ctx, subj); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("marker event %d not stored", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
		info, err := b.Events.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs - uint64(i) - 1 // not counting the markers
	}
	for i, s := range steps {
		if s.before != nil {
			s.before()
		}
		r0, e0 := rev(), events(2*i)
		c := ack(s.no)
		if wrote := rev() != r0; wrote != s.write {
			t.Fatalf("step %d (ReceivedNo %d): wrote %v, want %v", i, s.no, wrote, s.write)
		}
		if evented := events(2*i+1) != e0; evented != s.write {
			t.Fatalf("step %d (ReceivedNo %d): trace event %v, want %v", i, s.no, evented, s.write)
		}
		if s.check != nil && !s.check(c) {
			t.Fatalf("step %d (ReceivedNo %d): %+v", i, s.no, c)
		}
	}
}

// TestCloneSharesNoArray: a clone of a remembered state shares no slice
// with it: Updates of one channel run at once, each on its own clone, and
// one's edit of its Uncounted (taken removes a sequence in place) must not
// change another's (found by CI: the push bench counted a message twice).
func TestCloneSharesNoArray(t *testing.T) {
	c := Channel{RecentSeqs: []uint64{1, 2}, Writes: []uint64{3, 4}, Uncounted: []uint64{5, 6}}
	d := c.clone()
	d.RecentSeqs[0], d.Writes[0], d.Uncounted[0] = 0, 0, 0
	if c.RecentSeqs[0] != 1 || c.Writes[0] != 3 || c.Uncounted[0] != 5 {
		t.Errorf("editing a clone changed the original: %+v", c)
	}
}

// twiceListedKV lists every key twice, as a bucket listing can hand out a
// key written while the listing runs.
type twiceListedKV struct{ jetstream.KeyValue }

func (k twiceListedKV) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	l, err := k.KeyValue.ListKeys(ctx, opts...)
	if err != nil {
		return nil, err
	}
	out := make(chan string)
	go func() {
		defer close(out)
		for key := range l.Keys() {
			out <- key
			out <- key
		}
	}()
	return twiceLister{l, out}, nil
}

type twiceLister struct {
	jetstream.KeyLister
	keys chan string
}

func (l twiceLister) Keys() <-chan string { return l.keys }

// TestListOnceEachChannel: a channel listed twice by the bucket is one
// channel (found by local CI against Debian's nats-server: /metrics
// answered 500 for a duplicate series).
func TestListOnceEachChannel(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	s := NewStates(b.Channels)
	if _, err := s.Update(ctx, "P", "A", "B", func(c *Channel) { c.Queued++ }); err != nil {
		t.Fatal(err)
	}
	chans, err := NewStates(twiceListedKV{b.Channels}).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(chans) != 1 {
		t.Errorf("%d channels listed, want 1: %+v", len(chans), chans)
	}
}

// A number dropped past a lower one the channel waits for is passed once
// the channel gets to it, by a delivery or a drop of the lower one; before
// the first delivery a drop starts the channel as any number may.
func TestDropPassedInOrder(t *testing.T) {
	c := Channel{DeliveredNo: 1, DeadNo: 2}
	c.drop(3)
	if c.passedNo() != 1 || c.deadHold() != 2 {
		t.Fatalf("No 3 dropped while No 2 is dead: passed %d, dead hold %d; want 1, 2", c.passedNo(), c.deadHold())
	}
	c.drop(2)
	if c.passedNo() != 3 || c.deadHold() != 0 || c.DroppedAhead != nil {
		t.Fatalf("then No 2 dropped: passed %d, dead hold %d, ahead %v; want 3, 0, none", c.passedNo(), c.deadHold(), c.DroppedAhead)
	}
	c = Channel{DeliveredNo: 4}
	c.drop(6)
	c.DeliveredNo = 5 // No 5 delivered
	c.settle()
	if c.passedNo() != 6 {
		t.Fatalf("No 6 dropped, then No 5 delivered: passed %d, want 6", c.passedNo())
	}
	c = Channel{DeadNo: 5}
	c.drop(5)
	if c.passedNo() != 5 || c.deadHold() != 0 {
		t.Fatalf("the first number dead and dropped: passed %d, dead hold %d; want 5, 0", c.passedNo(), c.deadHold())
	}
}
