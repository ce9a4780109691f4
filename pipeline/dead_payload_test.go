package pipeline

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
)

// TestDropAfterRetryDiedAgainDeletesPayload: No 1 dies, is retried (a new
// record naming the same payload) and dies again; the operator drops the
// second letter. Both records are done: the payload goes. payloadInUse
// counted done records still in the stream (kept until PurgeDone) and kept
// the payload for good (found by review); it now starts after the delivery
// consumer's ack floor.
func TestDropAfterRetryDiedAgainDeletesPayload(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		return exchange.Permanent(errors.New("refused for good"))
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	diesRetriedDiesAgain(t, p)
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 || ls[0].Object == "" {
		t.Fatalf("dead letters %+v, %v: want the retry's letter, payload kept", ls, err)
	}
	l := ls[0]
	if err := p.DropDead(ctx, l.Seq); err != nil {
		t.Fatal(err)
	}
	if ls, err = p.Dead().List(ctx); err != nil || len(ls) != 0 {
		t.Fatalf("dead letters after the drop: %+v, %v", ls, err)
	}
	c, _ := p.States().Get(ctx, "P", "SRC", "DST")
	if has, err := b.HasPayload(ctx, l.Object, l.Size, l.SHA256); err != nil || has {
		t.Fatalf("No 1's last letter dropped, no record waits (pending %d), yet its payload %s is kept (%v): nothing will ever delete it", c.Pending(), l.Object, err)
	}
}

// diesRetriedDiesAgain waits for SRC → DST No 1 to die, retries its
// letter and waits for it to die again.
func diesRetriedDiesAgain(t *testing.T, p *Pipeline) {
	t.Helper()
	ctx := context.Background()
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want No 1 dead", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if _, err := p.Retry(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 2 }); c.Dead != 2 {
		t.Fatalf("state %+v: want No 1 dead again after its retry", c)
	}
}
