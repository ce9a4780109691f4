package pipeline

import (
	"context"
	"errors"
	"testing"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// queueRecordAgain queues a second record of the same message No no (same
// id, same payload object) as ingest does when the same file is taken in
// again after the stream's 2-minute duplicate window: a fresh record.
func queueRecordAgain(t *testing.T, b *bus.Bus, from, to string, no uint64) {
	t.Helper()
	m := storedRecord(t, b, from, to, no)
	nm, err := (&wmnats.NATSMarshaler{}).Marshal(bus.Subject("P", from, to), m)
	if err != nil {
		t.Fatal(err)
	}
	// Past the duplicate window: the stream takes it as new.
	if _, err := b.JS.PublishMsg(context.Background(), nm, jetstream.WithMsgID(m.UUID+"#later")); err != nil {
		t.Fatal(err)
	}
}

// TestDuplicateRecordStillCounted: the same file taken in twice (two
// records of No 1, one payload). The first record's first attempt fails;
// the second is delivered (dropping the shared payload), then No 2. The
// first record, back, is counted as a duplicate. Judging "resolved before"
// by the missing payload acked it uncounted and left one message pending
// for ever (found by review); the channel remembers its recently resolved
// records' stream sequences instead.
func TestDuplicateRecordStillCounted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 1 && attempt == 1 {
			return errors.New("destination busy")
		}
		return nil
	}}
	p := runPipeline(t, retryYAML, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 1, 2 }); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecordAgain(t, b, "SRC", "DST", 1)
	if c := waitChannel(t, p, "P", 10*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 }); c.DeliveredNo != 1 {
		t.Fatalf("state %+v: want No 1 delivered", c)
	}
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 2, c.Queued+1 }); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 2)
	c := waitChannel(t, p, "P", 10*time.Second, func(c Channel) bool { return c.DeliveredNo == 2 && c.Pending() == 0 })
	time.Sleep(3 * time.Second) // the first record's second offer
	c, _ = p.States().Get(ctx, "P", "SRC", "DST")
	if c.Pending() != 0 {
		t.Fatalf("three records taken in, all offered and acked (delivered %v), yet pending %d: queued %d, resolved %d, duplicates %d, stale %d",
			d.delivered(), c.Pending(), c.Queued, c.Resolved, c.Duplicates, c.Stale)
	}
}
