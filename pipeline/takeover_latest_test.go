package pipeline

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// TestTakeOverSupersededCountedOnce: latest-mode node. Under the old
// consumer (deliver_<node>), No 1 and No 2 of SRC → DST are superseded by
// No 3 (queued, not yet delivered when the relay stops for the upgrade),
// counted and acked; another channel's record below them keeps the ack
// floor low. The new consumer offers No 1 and No 2 again (first offer):
// offeredBefore was only asked in the stale/duplicate branches, so each
// was counted superseded a second time (found by review). A record the
// channel lists as resolved, offered first up to the mark, is acked.
func TestTakeOverSupersededCountedOnce(t *testing.T) {
	ctx := context.Background()
	d := &scriptedDelivery{}
	p, b, nc, in, handle := takeOverSite(t, "latest", d)
	queueRecord(t, b, "OTH", "DST", 1) // seq 1: keeps the old consumer's floor at 0
	for no := uint64(1); no <= 3; no++ {
		ingestNo(t, p, no)
	}
	legacy := bus.LegacyConsumerFor("deliver", "DST")
	old := func(m *message.Message) error {
		h, err := exchange.HeaderOf(m)
		if err == nil && (h.From == "OTH" || h.MessageNo == 3) {
			return errors.New("not handled before the relay stopped")
		}
		return handle(m)
	}
	drainFor(t, namedSubscriber(t, nc, "DST", legacy, "", in), old, 3*time.Second)
	before, _ := p.States().Get(ctx, "P", "SRC", "DST")
	if before.Superseded != 2 || before.Resolved != 2 || len(d.delivered()) != 0 {
		t.Fatalf("setup: superseded %d, resolved %d, delivered %v", before.Superseded, before.Resolved, d.delivered())
	}
	drainFor(t, pipelineSubscriber(t, p, nc, "DST", in), handle, 3*time.Second)
	c, _ := p.States().Get(ctx, "P", "SRC", "DST")
	t.Logf("after: queued %d resolved %d superseded %d delivered %v", c.Queued, c.Resolved, c.Superseded, d.delivered())
	if c.Superseded != 2 || c.Resolved != 3 {
		t.Fatalf("3 queued, No 1 and 2 superseded once, No 3 delivered; taken over: superseded %d, resolved %d of %d queued: records superseded before, offered again by the new consumer, were counted again", c.Superseded, c.Resolved, c.Queued)
	}
}
