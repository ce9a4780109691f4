package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// handPickup is a pickup whose messages the test hands over itself. Like
// any subscriber, it closes its channel once its context ends or on Close:
// the router waits for that.
type handPickup struct {
	ch   chan *message.Message
	once sync.Once
}

func newHandPickup() *handPickup { return &handPickup{ch: make(chan *message.Message)} }

func (h *handPickup) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	context.AfterFunc(ctx, func() { h.Close() })
	return h.ch, nil
}

func (h *handPickup) Close() error {
	h.once.Do(func() { close(h.ch) })
	return nil
}

// channelEndpoints gives each node a pickup fed by the test and a scripted
// delivery.
type channelEndpoints struct{ pickups map[string]*handPickup }

func (e channelEndpoints) Pickup(node string, _ *config.Endpoint, _ *Memory, _ *slog.Logger) (message.Subscriber, error) {
	return e.pickups[node], nil
}

func (e channelEndpoints) Deliver(string, *config.Endpoint, *slog.Logger) (message.Publisher, error) {
	return &scriptedDelivery{}, nil
}

// unreadable is a body that must not be read.
type unreadable struct{ read chan struct{} }

func (u unreadable) Read([]byte) (int, error) {
	select {
	case u.read <- struct{}{}:
	default:
	}
	return 0, errors.New("the body of a file over the limit was read")
}

// A file the pickup reports as over the size limit (and leaves in place)
// becomes a dead letter with its reason and size, without its bytes: the
// pipeline does not read a body it could not keep.
func TestTooLargeFileDeadLetterWithoutPayload(t *testing.T) {
	b := testBus(t)
	in := newHandPickup()
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { pickup: { dir: ./src/out }, deliver: { dir: ./src/in } }
  DST: { deliver: { dir: ./dst/in } }
`, b, channelEndpoints{pickups: map[string]*handPickup{"SRC": in}})

	size := exchange.DefaultLimits().MaxSize + 1
	msg := message.NewMessage(watermill.NewUUID(), nil)
	msg.Metadata.Set(exchange.MetaNode, "SRC")
	msg.Metadata.Set(exchange.MetaSource, "test:Message_SRC_DST.xml")
	msg.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.xml")
	msg.Metadata.Set(exchange.MetaProblem, "too large: left in place")
	msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(size, 10))
	read := make(chan struct{}, 1)
	exchange.SetBody(msg, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(unreadable{read}), nil })
	select {
	case in.ch <- msg:
	case <-time.After(20 * time.Second):
		t.Fatal("the pipeline did not take the message")
	}
	select {
	case <-msg.Acked():
	case <-msg.Nacked():
		t.Fatal("nacked")
	case <-time.After(20 * time.Second):
		t.Fatal("no answer from the pipeline")
	}
	select {
	case <-read:
		t.Fatal("the body was read")
	default:
	}
	ls, err := p.Dead().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(ls))
	}
	l := ls[0]
	if l.Object != "" || l.Size != size || l.Stage != StagePickup || !strings.Contains(l.Reason, "left in place") || !strings.Contains(l.Reason, "payload not kept") {
		t.Errorf("dead letter %+v", l)
	}
}

// A file taken again (the relay was killed after JetStream acked its
// record, before the source was committed; or the commit failed) while 1C
// overwrites it with its next message: the payload of the record queued by
// the first take must still be there for its delivery. A second put read
// the new bytes, found them not the inspected ones, and deleted the payload
// under the queued record; now a payload stored whole is kept as it is —
// also when the relay was killed before the channel state learnt of the
// first take (found by review: PickedNo behind the record, the payload
// deleted, No 7 dead at delivery and lost).
func TestReputChangedFileKeepsQueuedPayload(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(t *testing.T, b *bus.Bus, ingest message.NoPublishHandlerFunc, body string)
	}{
		{"state knows it", func(t *testing.T, _ *bus.Bus, ingest message.NoPublishHandlerFunc, body string) {
			if err := ingest(pickedUp("SRC", "DST", 7, body)); err != nil {
				t.Fatal(err)
			}
		}},
		{"killed before the state knew", func(t *testing.T, b *bus.Bus, _ message.NoPublishHandlerFunc, _ string) {
			queueRecord(t, b, "SRC", "DST", 7)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testBus(t)
			p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
			ingest := p.ingestHandler("SRC", "test", p.pushLane)
			body := "No 7" // as queueRecord stores it
			tc.first(t, b, ingest, body)
			// Taken again: inspected as the same No 7, but while it is read
			// into the object store, 1C writes No 8 over it.
			again := pickedUp("SRC", "DST", 7, body)
			exchange.SetBody(again, func(context.Context) (io.ReadCloser, error) {
				return io.NopCloser(strings.NewReader("No 8")), nil
			})
			if err := ingest(again); err != nil {
				t.Fatalf("taken again: %v (its record is queued; the take is a duplicate)", err)
			}
			sum := sha256.Sum256([]byte(body))
			sha := hex.EncodeToString(sum[:])
			id := MessageID(exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 7}, sha)
			r, err := b.OpenKnownPayload(context.Background(), id, int64(len(body)), sha)
			if err != nil {
				t.Fatalf("the queued record of No 7 lost its payload: %v", err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || string(got) != body {
				t.Fatalf("payload of No 7 reads %q, %v; want %q", got, err, body)
			}
		})
	}
}

// TestCrashBeforeCountShowsPending: a relay killed between a record's
// publish and its count (taken) left a record the state never counted;
// the delivery counts it when it resolves it, so the next message waiting
// (No 3, held on a gap) shows as pending and the gap alert can fire (found
// by review: queued one below resolved for good, pending 0 while the
// channel stalled). The re-pickup of its file, dropped as a duplicate, is
// not counted again.
func TestCrashBeforeCountShowsPending(t *testing.T) {
	b := testBus(t)
	d := &scriptedDelivery{}
	// No 1 published by ingest, relay killed before its taken.
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 && c.Resolved == 1 }); c.DeliveredNo != 1 {
		t.Fatalf("state %+v: want No 1 delivered", c)
	}
	ingest := p.ingestHandler("SRC", "test", p.pushLane)
	// The source was never committed: taken again after the restart.
	if err := ingest(pickedUp("SRC", "DST", 1, "No 1")); err != nil {
		t.Fatal(err)
	}
	// No 2 is lost on its way; No 3 waits for it.
	if err := ingest(pickedUp("SRC", "DST", 3, "No 3")); err != nil {
		t.Fatal(err)
	}
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.HeldOnGap() })
	if !c.HeldOnGap() {
		t.Fatalf("state %+v: No 3 not held on the gap", c)
	}
	if c.Pending() != 1 {
		t.Fatalf("No 3 waits on a gap, yet the channel shows pending %d (queued %d, resolved %d, duplicates %d): relay status shows nothing waiting and the gap alert is off",
			c.Pending(), c.Queued, c.Resolved, c.Duplicates)
	}
}

// TestCountedOnceWhicheverComesFirst: a record is counted as queued once,
// whether its pickup's count (taken) comes before its resolution (finish)
// or after it — the delivery may finish before the count is in — or never.
func TestCountedOnceWhicheverComesFirst(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		order []string
		want  uint64 // queued
	}{
		{"count first", []string{"taken", "finish"}, 1},
		{"finish first", []string{"finish", "taken"}, 1},
		{"count never", []string{"finish"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { deliver: { dir: ./dst } }
`, testBus(t), scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
			l := p.pushLane
			h := exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 4}
			for _, step := range tc.order {
				switch step {
				case "taken":
					l.taken(ctx, h, time.Now(), true, 9)
				case "finish":
					if err := l.finish(ctx, h, 9, "id-4", "", func(*Channel) {}); err != nil {
						t.Fatal(err)
					}
				}
			}
			c, err := p.states.Get(ctx, "P", "SRC", "DST")
			if err != nil {
				t.Fatal(err)
			}
			if c.Queued != tc.want || c.Resolved != 1 || c.PickedNo != 4 || c.Pending() != 0 {
				t.Errorf("queued %d, resolved %d, picked No %d, pending %d; want queued %d, resolved 1, picked 4, pending 0", c.Queued, c.Resolved, c.PickedNo, c.Pending(), tc.want)
			}
		})
	}
}
