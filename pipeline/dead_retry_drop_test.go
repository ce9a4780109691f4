package pipeline

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// TestRepeatedRetryAfterLostPublishReplyCounted: a retry's publish is
// stored by JetStream but its reply is lost (Retry returns "publish: ...",
// the letter stays); the operator repeats the retry, which finds the record
// queued (dup) and removes the letter. The record was then counted
// nowhere: the channel showed more resolved than queued (found by review).
// A record no count has seen is counted now.
func TestRepeatedRetryAfterLostPublishReplyCounted(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	// The first retry's record is not delivered before the second retry
	// runs (delivered, its payload is freed, and a second retry is rightly
	// refused): the delivery of No 1's second attempt waits for it.
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 1 && attempt == 1 {
			return exchange.Permanent(errors.New("refused for good"))
		}
		if no == 1 && attempt == 2 {
			<-release
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want No 1 dead", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	l := ls[0]
	before, _ := p.States().Get(ctx, "P", "SRC", "DST")

	// The first retry's publish, exactly as Retry makes it: stored, its
	// reply lost.
	h := *l.Header
	id := MessageID(h, l.SHA256)
	rec := message.NewMessage(retryID(id, l.Seq), nil)
	exchange.SetHeader(rec, h)
	rec.Metadata.Set(exchange.MetaFileName, l.FileName)
	rec.Metadata.Set(exchange.MetaSize, strconv.FormatInt(l.Size, 10))
	rec.Metadata.Set(exchange.MetaSHA256, l.SHA256)
	rec.Metadata.Set(exchange.MetaObject, l.Object)
	rec.Metadata.Set(exchange.MetaSource, "dead:"+strconv.FormatUint(l.Seq, 10))
	rec.Metadata.Set(exchange.MetaNode, l.Node)
	if _, _, err := publishRecord(ctx, b.JS, bus.Subject("P", "SRC", "DST"), rec); err != nil {
		t.Fatal(err)
	}
	// The operator repeats the retry.
	_, err = p.Retry(ctx, l.Seq)
	once.Do(func() { close(release) })
	if err != nil {
		t.Fatalf("repeated retry: %v", err)
	}
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 && c.Resolved >= before.Resolved+1 })
	if c.DeliveredNo != 1 {
		t.Fatalf("retried No 1 not delivered: %+v", c)
	}
	time.Sleep(300 * time.Millisecond)
	c, _ = p.States().Get(ctx, "P", "SRC", "DST")
	if c.Queued != before.Queued+1 || c.Queued < c.Resolved {
		t.Fatalf("after a retry whose publish reply was lost and was repeated: queued %d → %d, resolved %d → %d: the retried record was never counted as queued (want queued %d)",
			before.Queued, c.Queued, before.Resolved, c.Resolved, before.Queued+1)
	}
}

// TestDropHigherLetterKeepsLowerDeadHold: on sequential DST, No 2 and
// No 3 died at route (DST had no deliver endpoint); No 1 was delivered and
// No 4 waits for No 2. The operator drops only No 3's letter. DropDead sets
// DroppedNo = 3, and passedNo() = max(DeliveredNo, DroppedNo) = 3 makes the
// channel go past No 2 too, though its letter was still there: No 4 was
// delivered, and No 2's retry then dropped as stale — lost (found by
// review). A dropped number is passed once the channel gets to it.
func TestDropHigherLetterKeepsLowerDeadHold(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 1)
	putRouteLetter(t, b, 2)
	putRouteLetter(t, b, 3)
	queueRecord(t, b, "SRC", "DST", 4)
	p := runSequential(t, b, d)
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool {
		return c.DeliveredNo == 1 && strings.HasPrefix(c.LastError, gapPrefix)
	})
	if c.DeliveredNo != 1 || !c.HeldOnGap() {
		t.Fatalf("state %+v: want No 1 delivered, No 4 held for No 2", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 2 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	var l2, l3 DeadLetter
	for _, l := range ls {
		switch l.Header.MessageNo {
		case 2:
			l2 = l
		case 3:
			l3 = l
		}
	}
	if err := p.DropDead(ctx, l3.Seq); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	c, _ = p.States().Get(ctx, "P", "SRC", "DST")
	if got := d.delivered(); len(got) > 1 {
		t.Errorf("only No 3's letter dropped, No 2's still there, yet the channel went past No 2: delivered %v, state delivered %d dropped %d dead %d",
			got, c.DeliveredNo, c.DroppedNo, c.DeadNo)
	}
	if _, err := p.Retry(ctx, l2.Seq); err != nil {
		t.Fatalf("retry No 2: %v", err)
	}
	waitChannel(t, p, "P", 10*time.Second, func(c Channel) bool { return c.DeliveredNo >= 4 && c.Pending() == 0 })
	c, _ = p.States().Get(ctx, "P", "SRC", "DST")
	if got := d.delivered(); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 4 {
		t.Fatalf("sequential channel delivered %v after dropping No 3 and retrying No 2, want [1 2 4] (No 2 stale %d)", got, c.Stale)
	}
}
