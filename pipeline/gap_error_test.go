package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// srcToSequentialDST is a relay delivering to SRC and to DST, a sequential
// node.
const srcToSequentialDST = `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`

// runSequentialTaken runs a relay delivering to SRC and, with d, to DST, a
// sequential node, whose channel P: SRC → DST counts picked-up number
// picked and queued records taken in, as the pickups of the records the
// test queued left it.
func runSequentialTaken(t *testing.T, b *bus.Bus, d *scriptedDelivery, picked, queued uint64) *Pipeline {
	t.Helper()
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	if _, err := p.States().Update(context.Background(), "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = picked, queued }); err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
	return p
}

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
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 7)
	queueRecord(t, b, "SRC", "DST", 6)
	p := runSequentialTaken(t, b, d, 7, 2)
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Resolved == 2 })
	if !slices.Equal(d.delivered(), []uint64{6, 7}) || c.DeliveredNo != 7 || c.Stale != 0 {
		t.Fatalf("delivered %v, state %+v: want No 6, then No 7", d.delivered(), c)
	}
}

// queueUnreadable puts a record of No no on P: from → to that the delivery
// cannot read (its received number is no number): it is dead-lettered at
// delivery (StageDeliver, no header) and acked, leaving no trace in the
// channel's state (no RecentSeqs, no DeadNo).
func queueUnreadable(t *testing.T, b *bus.Bus, from, to string, no uint64) {
	t.Helper()
	m := storedRecord(t, b, from, to, no)
	m.Metadata.Set(exchange.MetaReceivedNo, "x")
	m.UUID += "#unreadable"
	if _, _, err := publishRecord(context.Background(), b.JS, bus.Subject("P", from, to), m); err != nil {
		t.Fatal(err)
	}
}

// TestUnreadableLowerRecordHoldsNothing: No 7, then an unreadable record
// carrying No 6 (dead-lettered at delivery). The unreadable one is
// resolved (acked, a dead letter) but stays above the ack floor (No 7,
// held, is nacked below it) and is not in RecentSeqs: the first
// delivery's wait for a lower queued number found it at every look, and
// No 7 waited for good (found by review).
func TestUnreadableLowerRecordHoldsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 7)
	queueUnreadable(t, b, "SRC", "DST", 6)
	p := runSequentialTaken(t, b, d, 7, 1)
	c := waitChannel(t, p, "P", 12*time.Second, func(c Channel) bool { return c.DeliveredNo == 7 })
	letters, _ := p.dead.List(ctx)
	if c.DeliveredNo != 7 {
		_, skipErr := p.SkipThrough(ctx, "P", "SRC", "DST", 6)
		t.Fatalf("No 7 never delivered (dead letters: %d): last error %q; relay skip 6: %v", len(letters), c.LastError, skipErr)
	}
}

// TestSkipPastUnreadableRecord: No 5 delivered, No 7 held on the gap at
// No 6, whose only record is unreadable (a dead letter with no header:
// neither retried nor dropped into the channel's state). The hold tells
// the operator to `relay skip P SRC DST 6`; the skip was refused ("No 6 is
// queued") for as long as No 7 held the ack floor: for good (found by
// review).
func TestSkipPastUnreadableRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 5)
	queueRecord(t, b, "SRC", "DST", 7)
	queueUnreadable(t, b, "SRC", "DST", 6)
	p := runSequentialTaken(t, b, d, 7, 2)
	c := waitChannel(t, p, "P", 12*time.Second, func(c Channel) bool {
		return c.DeliveredNo == 5 && strings.Contains(c.LastError, "until No 6 arrives")
	})
	if !strings.Contains(c.LastError, "relay skip P SRC DST 6") {
		t.Fatalf("not held on the gap: %+v", c)
	}
	time.Sleep(2 * time.Second) // the unreadable record is dead-lettered by now
	if _, err := p.SkipThrough(ctx, "P", "SRC", "DST", 6); errors.Is(err, ErrCannotSkip) {
		letters, _ := p.dead.List(ctx)
		t.Fatalf("the hold's own command is refused (dead letters: %d): %v", len(letters), err)
	} else if err != nil {
		t.Fatal(err)
	}
}

// TestGapHoldsKeepOneWord: two numbers held behind the same gap each tell
// their hold once; then the channel keeps one of their words. They wrote
// their own words over each other's at every look (about once a second
// each: a warning in the log and a state write each time), as the unread
// holds did before them (found by review).
func TestGapHoldsKeepOneWord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	for _, no := range []uint64{1, 3, 4} {
		queueRecord(t, b, "SRC", "DST", no)
	}
	p := runSequentialTaken(t, b, &scriptedDelivery{}, 4, 3)
	waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 && c.HeldOnGap() })
	time.Sleep(2 * time.Second) // both told once
	rev := func() uint64 {
		e, err := b.Channels.Get(ctx, bus.ChannelKey("P", "SRC", "DST"))
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision()
	}
	r0 := rev()
	time.Sleep(5 * time.Second) // about five looks at each
	if n := rev() - r0; n > 1 {
		c, _ := p.States().Get(ctx, "P", "SRC", "DST")
		t.Fatalf("the channel's state was written %d times in 5 s by two held numbers (now %q)", n, c.LastError)
	}
}

// countGets counts the message gets of the EXCHANGE stream (direct or
// through the API), by listening to their requests.
func countGets(t *testing.T, b *bus.Bus) *atomic.Int64 {
	t.Helper()
	var gets atomic.Int64
	nc := testConn(t, b)
	for _, subj := range []string{"$JS.API.DIRECT.GET.EXCHANGE.>", "$JS.API.DIRECT.GET.EXCHANGE", "$JS.API.STREAM.MSG.GET.EXCHANGE"} {
		if _, err := nc.Subscribe(subj, func(*nats.Msg) { gets.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return &gets
}

// TestGapHoldScanCost: No 1 delivered, No 2 missing, No 3..N+2 queued and
// held on the gap. Every look of every held number read every record of
// the channel to name the run of missing numbers: N² reads a round (15,000
// a second for 400), and No 2, once it came, was not offered for a minute
// (found by review). The lowest queued number is remembered per channel.
func TestGapHoldScanCost(t *testing.T) {
	t.Parallel()
	const n = 400
	b := testBus(t)
	gets := countGets(t, b)
	queueRecord(t, b, "SRC", "DST", 1)
	for no := uint64(3); no < n+3; no++ {
		queueRecord(t, b, "SRC", "DST", no)
	}
	d := &scriptedDelivery{}
	p := runSequentialTaken(t, b, d, n+2, n+1)
	c := waitChannel(t, p, "P", 20*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 && c.HeldOnGap() })
	if !strings.Contains(c.LastError, "until No 2 arrives") {
		t.Fatalf("not held: %+v", c)
	}
	time.Sleep(3 * time.Second)
	g0 := gets.Load()
	time.Sleep(5 * time.Second)
	g := gets.Load() - g0
	t.Logf("%d direct gets of EXCHANGE in 5 s with %d numbers held on one gap (%q)", g, n, c.LastError)
	if g > 10*n {
		t.Fatalf("%d reads of the stream in 5 s (%d/s) for a channel that only waits: each look of each of %d held numbers scans all of them", g, g/5, n)
	}
}

// TestHeldRemembersMany: what each held message told is remembered for as
// many messages as a node may hold (maxHeld). It was forgotten all at once
// past 4,096 (maxFailing), and then every look of every held number told
// its hold again: 14,620 state writes in 5 s with 4,396 numbers behind one
// dead letter (found by review).
func TestHeldRemembersMany(t *testing.T) {
	var in inflight
	for i := range maxFailing + 300 {
		in.heldAnew(fmt.Sprint("id", i), "gap: held")
	}
	if in.heldAnew("id0", "gap: held") {
		t.Fatalf("the first of %d held messages was forgotten", maxFailing+300)
	}
}
