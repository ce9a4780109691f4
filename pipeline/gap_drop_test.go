package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
)

// TestGapAfterDropShown: No 2 dies and is dropped; No 3 never arrives; No 4
// waits for it: a real gap, shown at once. The dropped letter's reason
// stayed the channel's last error and, taken for a number queued and
// failing, kept the gap silent for up to 11 minutes (found by review): a
// drop, like a stale resolution, now clears it.
func TestGapAfterDropShown(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 2 {
			return exchange.Permanent(errors.New("refused for good"))
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecord(t, b, "SRC", "DST", 2)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 1 && c.DeliveredNo == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want No 1 delivered, No 2 dead", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 4)
	c := waitChannel(t, p, "P", 6*time.Second, func(c Channel) bool { return strings.HasPrefix(c.LastError, "gap: ") })
	if !strings.HasPrefix(c.LastError, "gap: ") {
		t.Fatalf("No 4 held for No 3, which never came (No 2 dropped), yet the channel says %q (at %s): no gap shown, no gap alert", c.LastError, c.LastErrorAt.Format(time.TimeOnly))
	}
}
