package pipeline

import (
	"testing"
	"time"

	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
)

// parkedLatest runs a pipeline on b whose node DST (mode latest) pulls
// through a mailbox, and waits until what queue puts on the channel SRC →
// DST is parked there.
func parkedLatest(t *testing.T, b *bus.Bus, queue func()) (*Pipeline, *pull.Mailbox) {
	t.Helper()
	mb := pull.NewMailbox("DST", pull.Config{Lease: config.Duration(time.Minute)}, nil)
	queue()
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: latest, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": mb})
	for deadline := time.Now().Add(20 * time.Second); mb.Waiting() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if mb.Waiting() == 0 {
		t.Fatal("setup: the first message never parked")
	}
	return p, mb
}

// pullUntil fetches from mb as a node would, handing back (untaken) what
// want refuses, until want takes an offer or 20 s passed; it returns the
// last offer fetched.
func pullUntil(mb *pull.Mailbox, want func(pull.Offer) bool) (pull.Offer, bool) {
	var o pull.Offer
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var ok bool
		if o, ok = mb.Next(); ok && want(o) {
			return o, true
		} else if ok {
			mb.Release(o.ID, nil)
		}
	}
	return o, false
}

// TestPullLatestParkedSuperseded: mode latest, a pull node that has not
// fetched its No 1 yet (offline) while No 2, carrying all its changes, is
// queued behind it. The node got No 1 first, and nothing else until it
// acknowledged it: back after a week it loaded the week-old message before
// the newest, and one that could not load No 1 never got No 2 (found by
// review). No 1 leaves the mailbox now, and is dropped and counted.
func TestPullLatestParkedSuperseded(t *testing.T) {
	b := testBus(t)
	p, mb := parkedLatest(t, b, func() { queueRecord(t, b, "SRC", "DST", 1) })
	queueRecord(t, b, "SRC", "DST", 2)
	o, ok := pullUntil(mb, func(o pull.Offer) bool { return o.Header.MessageNo == 2 })
	if !ok {
		t.Fatalf("mode latest: the node's fetch still gets No %d with No 2 queued behind it", o.Header.MessageNo)
	}
	mb.Sent(o.ID)
	if err := mb.Ack(o.ID); err != nil {
		t.Fatal(err)
	}
	// No 1, offered again after No 2 is delivered or before, is dropped
	// and counted either way (stale or superseded).
	c := waitChannel(t, p, "P", 20*time.Second, func(c Channel) bool { return c.Resolved == 2 })
	if c.DeliveredNo != 2 || c.Superseded+c.Stale != 1 || c.Resolved != 2 {
		t.Fatalf("channel after No 2 was pulled: delivered No %d, superseded %d, stale %d, resolved %d; want No 2 delivered, No 1 dropped",
			c.DeliveredNo, c.Superseded, c.Stale, c.Resolved)
	}
}

// TestPullByNameParkedSuperseded: the same for a channel routed by name (a
// sealed zip: no MessageNo, its order is the stream's): the first version
// of the withdrawal left such a message parked, and the node kept getting
// the old zip, the newer one held behind it (found by review).
func TestPullByNameParkedSuperseded(t *testing.T) {
	b := testBus(t)
	_, mb := parkedLatest(t, b, func() { queueByNameStored(t, b, "old zip") })
	newSHA := queueByNameStored(t, b, "new zip")
	if o, ok := pullUntil(mb, func(o pull.Offer) bool { return o.SHA256 == newSHA }); !ok {
		t.Fatalf("mode latest, routed by name: 20 s after a newer zip was queued the node still gets the old one (sha %.8s), not the newer", o.SHA256)
	}
}
