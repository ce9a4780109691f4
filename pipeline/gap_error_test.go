package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// srcToSequentialDST is a relay delivering to SRC and to DST, a sequential
// node.
const srcToSequentialDST = `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`

// TestGapHoldKeepsPredecessorFailure: on a sequential channel the number
// queued behind one whose delivery fails (the destination is down) is held,
// and the channel keeps showing the destination's error. The hold wrote
// "gap: holding No 6 until No 5 arrives" over it about once a second (No 5's
// error came back only at its retries, up to 5 min apart): status and the
// gap alert told the operator No 5 never arrived (found by review).
func TestGapHoldKeepsPredecessorFailure(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, _ int) error {
		if no == 5 {
			return errors.New("ftp dst: connection refused")
		}
		return nil
	}}
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	ctx := context.Background()
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) {
		c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 6, 4, 6, 4
	}); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 5)
	queueRecord(t, b, "SRC", "DST", 6)
	runUntilEnd(t, p)

	time.Sleep(4 * time.Second)
	var samples, misleading int
	var last string
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		c, err := p.States().Get(ctx, "P", "SRC", "DST")
		if err != nil {
			t.Fatal(err)
		}
		samples++
		if strings.Contains(c.LastError, "until No 5 arrives") {
			misleading++
			last = c.LastError
		}
	}
	if misleading > 0 {
		t.Fatalf("No 5 is queued and failing (connection refused), yet in %d of %d samples the channel's last error said %q", misleading, samples, last)
	}
}

// TestFirstDeliveryWaitsForLowerQueuedAfter: before a sequential
// channel's first delivery any number may start it, but not one with a
// lower number queued, whether before or after it in the stream (mails
// arrive out of order: the IMAP pickup took No 7 before No 6). No 7 went
// first and No 6 was dropped as stale behind it: its increments lost.
func TestFirstDeliveryWaitsForLowerQueuedAfter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 7)
	queueRecord(t, b, "SRC", "DST", 6)
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 7, 2 }); err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Resolved == 2 })
	if !slices.Equal(d.delivered(), []uint64{6, 7}) || c.DeliveredNo != 7 || c.Stale != 0 {
		t.Fatalf("delivered %v, state %+v: want No 6, then No 7", d.delivered(), c)
	}
}
