package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
)

// TestDropMisplacedPickupLetterKeepsGap: the pickup-stage letters with a
// header are files found in another node's outbox; their number is not
// that channel's. Dropping one leaves the channel's gap as it is. (For a
// while today DropDead recorded DroppedNo for any stage: No 3 went ahead
// without No 2; found by review.)
func TestDropMisplacedPickupLetterKeepsGap(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 }); c.DeliveredNo != 1 {
		t.Fatalf("state %+v: want No 1 delivered", c)
	}
	// A stray copy of an SRC → DST file in DST's own outbox, as ingest's
	// deadFromPickup writes it (h.From != node).
	h := exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 50}
	if err := (&Dead{b: b}).put(ctx, DeadLetter{Node: "DST", Stage: StagePickup, Header: &h,
		Reason: `message from "SRC" found in the outbox of node "DST"`, Source: "dir:/dst/out/Message_SRC_DST.xml",
		FileName: exchange.FileName("SRC", "DST", exchange.FormatXML)}); err != nil {
		t.Fatal(err)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	// SRC's own No 3 arrives; its No 2 has not.
	queueRecord(t, b, "SRC", "DST", 3)
	c := waitChannel(t, p, "P", 5*time.Second, func(c Channel) bool {
		return c.DeliveredNo == 3 || strings.Contains(c.LastError, "until No 2")
	})
	if c.DeliveredNo != 1 {
		t.Fatalf("dropping a stray file's pickup letter (found in DST's outbox) let sequential SRC → DST skip its missing No 2: delivered %v, state delivered No %d, dropped No %d, last error %q",
			d.delivered(), c.DeliveredNo, c.DroppedNo, c.LastError)
	}
}

// TestDropRouteLetterWhileRetakenWaits: No 2 was dead-lettered at route,
// the file was put back after the fix, and No 2, taken in again, waits (the
// destination is busy), No 3 behind it. Dropping the old letter keeps the
// payload and does not count No 2 as passed: it is delivered before No 3.
// (Recording DroppedNo there made No 3 go first and No 2 stale: lost;
// found by review.)
func TestDropRouteLetterWhileRetakenWaits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 2 && attempt <= 3 {
			return errors.New("destination busy")
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 }); c.DeliveredNo != 1 {
		t.Fatalf("state %+v: want No 1 delivered", c)
	}
	queueRecord(t, b, "SRC", "DST", 2) // taken in again after the fix
	queueRecord(t, b, "SRC", "DST", 3)
	putRouteLetter(t, b, 2) // No 2's letter from route, naming the same payload
	time.Sleep(300 * time.Millisecond)
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	c := waitChannel(t, p, "P", 20*time.Second, func(c Channel) bool { return c.Resolved >= 3 && c.DeliveredNo == 3 })
	time.Sleep(8 * time.Second) // No 2's fourth attempt
	c, _ = p.States().Get(ctx, "P", "SRC", "DST")
	got := d.delivered()
	if len(got) != 3 || got[1] != 2 {
		t.Fatalf("sequential SRC → DST wrote %v (want [1 2 3]): No 2, queued again, was overtaken once its old route letter was dropped; stale %d, dropped No %d", got, c.Stale, c.DroppedNo)
	}
}
