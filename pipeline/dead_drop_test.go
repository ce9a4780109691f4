package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// TestDropRouteLetterReleasesSequentialGap: a sequential channel delivered
// No 1; No 2 was dead-lettered at route (DST had no deliver endpoint while
// routing.yaml was being changed); No 3 came after the fix and waits for
// No 2. The operator drops No 2's letter: the channel goes on. DropDead
// recorded DroppedNo for deliver-stage letters only, and the channel stayed
// held for ever behind a number that no longer existed (found by review).
func TestDropRouteLetterReleasesSequentialGap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecord(t, b, "SRC", "DST", 3)
	putRouteLetter(t, b, 2)
	p := runSequential(t, b, d)
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool {
		return c.DeliveredNo == 1 && strings.Contains(c.LastError, "gap")
	})
	if c.DeliveredNo != 1 || !strings.Contains(c.LastError, "gap") {
		t.Fatalf("state %+v: want No 1 delivered and No 3 held as a gap", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	c = waitChannel(t, p, "P", 8*time.Second, func(c Channel) bool { return c.DeliveredNo == 3 })
	if c.DeliveredNo != 3 {
		t.Fatalf("dead letter No 2 dropped, yet No 3 still held: delivered %v, state delivered No %d, dropped No %d, last error %q",
			d.delivered(), c.DeliveredNo, c.DroppedNo, c.LastError)
	}
}

// TestRetryOfLetterWithoutPayloadRefused: a message whose payload is gone
// dies at delivery, and its letter says the payload is not kept; a retry is
// refused (ErrCannotRetry, the API's 409), as it is for a letter whose kept
// payload went missing since. The letter named the payload ("kept; relay
// dead retry sends it again"), the retry answered "queued", removed the
// letter, and the message died again at once under a new letter (found by
// review).
func TestRetryOfLetterWithoutPayloadRefused(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	queueRecord(t, b, "SRC", "DST", 1)
	h := exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 1}
	sum := sha256.Sum256([]byte("No 1"))
	if err := b.DeletePayload(ctx, MessageID(h, hex.EncodeToString(sum[:]))); err != nil {
		t.Fatal(err)
	}
	p := runSequential(t, b, readFirst{&scriptedDelivery{}})
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want No 1 dead", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 || ls[0].Object != "" {
		t.Fatalf("dead letters %+v, %v: want one whose payload is not kept", ls, err)
	}
	id, err := p.Retry(ctx, ls[0].Seq)
	if !errors.Is(err, ErrCannotRetry) {
		time.Sleep(2 * time.Second)
		again, _ := p.Dead().List(ctx)
		t.Fatalf("retry of a letter whose payload is gone: id %q, err %v, want ErrCannotRetry; dead letters afterwards: %d (seq %v)", id, err, len(again), seqs(again))
	}

	// A letter that names its payload, gone since (deleted by hand, lost
	// with a store): refused too, and the letter stays.
	if err := (&Dead{b: b}).put(ctx, DeadLetter{Node: "DST", Stage: StageDeliver, Reason: "refused for good", Header: &h,
		MsgID: ls[0].MsgID, Object: ls[0].MsgID, Size: ls[0].Size, SHA256: ls[0].SHA256, FileName: ls[0].FileName}); err != nil {
		t.Fatal(err)
	}
	ls, err = p.Dead().List(ctx)
	if err != nil || len(ls) != 2 {
		t.Fatalf("dead letters %+v, %v: want two", ls, err)
	}
	if _, err := p.Retry(ctx, ls[1].Seq); !errors.Is(err, ErrCannotRetry) || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("retry of a letter whose kept payload is gone: %v, want ErrCannotRetry (its payload is gone)", err)
	}
	if ls, err = p.Dead().List(ctx); err != nil || len(ls) != 2 {
		t.Fatalf("dead letters after a refused retry %+v, %v: want both kept", ls, err)
	}
}

func seqs(ls []DeadLetter) []uint64 {
	var out []uint64
	for _, l := range ls {
		out = append(out, l.Seq)
	}
	return out
}

// TestDropKeepsPayloadOfQueuedRecord: a letter of route or delivery keeps
// the message's own payload, under the message's id. When the same message
// was taken in again meanwhile (its file put back in the outbox after the
// fix, the letter left behind), dropping the letter leaves the payload to
// the queued record: it deleted it, and the record died at delivery with
// its payload gone (found by review). A letter whose record is only its
// own still takes its payload with it.
func TestDropKeepsPayloadOfQueuedRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	// No 2 taken in again (queueRecord stores its payload under its id)
	// while its route letter from before the fix still names that payload.
	queueRecord(t, b, "SRC", "DST", 2)
	putRouteLetter(t, b, 2)
	// The destination is busy at first: the record waits while the letter
	// is dropped; No 3 dies at delivery for good.
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		switch {
		case no == 2 && attempt < 3:
			return errors.New("destination busy")
		case no == 3:
			return exchange.Permanent(errors.New("refused for good"))
		}
		return nil
	}}
	p := runPipeline(t, retryYAML, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": readFirst{d}})
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 2 }); c.DeliveredNo != 2 {
		t.Fatalf("No 2, queued again, not delivered after its old letter was dropped: delivered %v, state %+v", d.delivered(), c)
	}

	queueRecord(t, b, "SRC", "DST", 3)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want No 3 dead", c)
	}
	if ls, err = p.Dead().List(ctx); err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	if has, err := b.HasPayload(ctx, ls[0].Object, ls[0].Size, ls[0].SHA256); err != nil || has {
		t.Fatalf("payload of the dropped No 3 (its record its own): kept %v, %v; want it deleted", has, err)
	}
}

// readFirst reads each message's payload, as every real deliver adapter
// does (a missing one is jetstream.ErrObjectNotFound: dead at delivery),
// before its scripted delivery decides.
type readFirst struct{ *scriptedDelivery }

func (d readFirst) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		r, err := exchange.Body(m.Context(), m)
		if err != nil {
			return fmt.Errorf("open payload: %w", err)
		}
		_, err = io.Copy(io.Discard, r)
		r.Close()
		if err != nil {
			return err
		}
	}
	return d.scriptedDelivery.Publish(topic, msgs...)
}

// TestDeadLetterOncePerRecord: a record that dies at delivery again after
// the relay stopped between its letter and the channel's record of it (it
// is offered again and refused again) leaves one letter, not two; the same
// message queued again (a retry: a new record) dies as a new letter.
func TestDeadLetterOncePerRecord(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := &Dead{b: b}
	h := exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 1}
	letter := DeadLetter{Node: "DST", Stage: StageDeliver, Reason: "refused for good", Header: &h, MsgID: "P/SRC/DST/1/x", StreamSeq: 7}
	for range 2 {
		if err := d.put(ctx, letter); err != nil {
			t.Fatal(err)
		}
	}
	if ls, err := d.List(ctx); err != nil || len(ls) != 1 {
		t.Fatalf("one record dead twice: %d letters (%v), want 1", len(ls), err)
	}
	letter.StreamSeq = 9
	if err := d.put(ctx, letter); err != nil {
		t.Fatal(err)
	}
	if ls, err := d.List(ctx); err != nil || len(ls) != 2 {
		t.Fatalf("its retry's record dead too: %d letters (%v), want 2", len(ls), err)
	}
}

// TestUnreadableDeadLetterShownAndDropped: a letter that does not read
// (written by another program, or damaged) is listed with that reason and
// can be dropped. List skipped it without a word and Get failed on it: it
// could be neither seen nor dropped.
func TestUnreadableDeadLetterShownAndDropped(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	if _, err := b.JS.Publish(ctx, bus.DeadSubjectPrefix+bus.Token("ЦО"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	p := newPipeline(t, retryYAML, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 || ls[0].Node != "ЦО" || !strings.Contains(ls[0].Reason, "does not read") {
		t.Fatalf("dead letters %+v, %v: want the unreadable one, of ЦО, said so", ls, err)
	}
	if _, err := p.Retry(ctx, ls[0].Seq); !errors.Is(err, ErrCannotRetry) {
		t.Fatalf("retry of an unreadable letter: %v, want ErrCannotRetry", err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	if ls, err = p.Dead().List(ctx); err != nil || len(ls) != 0 {
		t.Fatalf("after the drop: %+v, %v", ls, err)
	}
}

// putRouteLetter stores the payload of SRC → DST No no (as storedRecord
// does) and its dead letter from route, as ingest writes it while DST has
// no deliver endpoint.
func putRouteLetter(t *testing.T, b *bus.Bus, no uint64) {
	t.Helper()
	m := storedRecord(t, b, "SRC", "DST", no)
	h := exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: no}
	size, _ := strconv.ParseInt(m.Metadata.Get(exchange.MetaSize), 10, 64)
	if err := (&Dead{b: b}).put(context.Background(), DeadLetter{Node: "DST", Stage: StageRoute, Reason: `node "DST" has no deliver endpoint`,
		Header: &h, MsgID: m.UUID, Object: m.UUID, Size: size, SHA256: m.Metadata.Get(exchange.MetaSHA256),
		FileName: m.Metadata.Get(exchange.MetaFileName)}); err != nil {
		t.Fatal(err)
	}
}

// TestDropRetriedLetterWhileAckFloorLags: on sequential node DST another
// channel (OTH → DST) holds a record on a gap, so the delivery consumer's
// ack floor stays below everything after it. SRC → DST No 1 dies, is
// retried, and dies again; No 2 waits behind it. The operator drops the
// second letter. payloadInUse scanned from the ack floor, found No 1's
// first (long finished) record naming the same payload and called it in
// use, so no DroppedNo was recorded: the letter was gone and No 2 held for
// ever behind a dead letter that no longer existed (found by review).
func TestDropRetriedLetterWhileAckFloorLags(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, _ int) error {
		if no == 1 {
			return exchange.Permanent(errors.New("refused for good"))
		}
		return nil
	}}
	queueRecord(t, b, "OTH", "DST", 5)
	queueRecord(t, b, "OTH", "DST", 7) // held on a gap: unacked, holds the ack floor
	queueRecord(t, b, "SRC", "DST", 1)
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  OTH: { deliver: { dir: ./oth } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "OTH": &scriptedDelivery{}, "DST": d})
	diesRetriedDiesAgain(t, p)
	queueRecord(t, b, "SRC", "DST", 2)
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	if err := p.DropDead(ctx, ls[0].Seq); err != nil {
		t.Fatal(err)
	}
	c := waitChannel(t, p, "P", 10*time.Second, func(c Channel) bool { return c.DeliveredNo == 2 })
	left, _ := p.Dead().List(ctx)
	if c.DeliveredNo != 2 {
		d.mu.Lock()
		defer d.mu.Unlock()
		t.Fatalf("No 1's only letter dropped, yet No 2 is still held: delivered %v, dead letters left %d, state dead_no %d dropped_no %d last error %q",
			d.got, len(left), c.DeadNo, c.DroppedNo, c.LastError)
	}
}

// TestDropDuplicateRouteLetterKeepsPayload: B has no deliver endpoint
// yet. A's No 3 is dead-lettered at route; the relay stops before its
// source is committed (or the commit fails), so the same file is taken
// again and dead-lettered again: two letters naming one payload (the
// message id). routing.yaml is fixed; the operator drops the second
// letter as the duplicate it is and retries the first. The drop deleted
// the payload the first letter names: the retry is refused ("payload
// gone") and the message, whose source was committed, is lost.
func TestDropDuplicateRouteLetterKeepsPayload(t *testing.T) {
	b := testBus(t)
	ctx := context.Background()
	p1 := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out }, deliver: { dir: ./a/in } }
  B: { pickup: { dir: ./b/out } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup(), "B": newHandPickup()}})
	for range 2 { // the same file, taken twice
		if err := p1.ingestHandler("A", "test", p1.pushLane)(pickedUp("A", "B", 3, "<m>3</m>")); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := p1.Dead().List(ctx)
	if err != nil || len(ls) != 2 {
		t.Fatalf("dead letters %+v, %v: want two route letters", ls, err)
	}
	if ls[0].Object != ls[1].Object {
		t.Fatalf("letters name payloads %q and %q", ls[0].Object, ls[1].Object)
	}
	// routing.yaml fixed: B has its deliver endpoint now.
	p2 := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  A: { pickup: { dir: ./a/out }, deliver: { dir: ./a/in } }
  B: { pickup: { dir: ./b/out }, deliver: { dir: ./b/in } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"A": newHandPickup(), "B": newHandPickup()}})
	if err := p2.DropDead(ctx, ls[1].Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := p2.Retry(ctx, ls[0].Seq); err != nil {
		t.Fatalf("the duplicate letter dropped, the remaining one cannot be retried: %v", err)
	}
}

// TestDeadListNewest: past MaxDeadList letters the list is the newest of
// them (it was the oldest: the letters an operator looks for, today's, did
// not show; found by review).
func TestDeadListNewest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	n := MaxDeadList + 5
	for i := range n {
		if _, err := b.JS.PublishAsync(bus.DeadSubjectPrefix+"B", fmt.Appendf(nil, `{"node":"B","reason":"r%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-b.JS.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("letters not stored")
	}
	ls, err := (&Dead{b: b}).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != MaxDeadList || ls[len(ls)-1].Reason != fmt.Sprintf("r%d", n-1) || ls[0].Reason != "r5" {
		t.Fatalf("%d letters listed, first %q, last %q: want the newest %d, r5 … r%d", len(ls), ls[0].Reason, ls[len(ls)-1].Reason, MaxDeadList, n-1)
	}
	// Three of the newest dropped: still the newest MaxDeadList letters,
	// reaching three further back (not fewer, found by the docs review).
	for _, seq := range []uint64{uint64(n), uint64(n - 1), uint64(n - 10)} {
		if err := b.Dead.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	if ls, err = (&Dead{b: b}).List(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ls) != MaxDeadList || ls[0].Reason != "r2" || ls[len(ls)-1].Reason != fmt.Sprintf("r%d", n-3) {
		t.Fatalf("after three drops: %d letters listed, first %q, last %q: want %d, r2 … r%d", len(ls), ls[0].Reason, ls[len(ls)-1].Reason, MaxDeadList, n-3)
	}
}
