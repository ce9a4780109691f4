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
// under the queued record; now a payload stored whole is kept as it is.
func TestReputChangedFileKeepsQueuedPayload(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	ingest := p.ingestHandler("SRC", "test", p.pushLane)
	body := "<message 7/>"
	if err := ingest(pickedUp("SRC", "DST", 7, body)); err != nil {
		t.Fatal(err)
	}
	// Taken again: inspected as the same No 7, but while it is read into
	// the object store, 1C writes No 8 over it.
	again := pickedUp("SRC", "DST", 7, body)
	exchange.SetBody(again, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("<message 8/>")), nil
	})
	if err := ingest(again); err != nil {
		t.Fatalf("taken again: %v (its record is queued; the take is a duplicate)", err)
	}
	sum := sha256.Sum256([]byte(body))
	id := MessageID(exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 7}, hex.EncodeToString(sum[:]))
	r, err := b.OpenKnownPayload(context.Background(), id, int64(len(body)), hex.EncodeToString(sum[:]))
	if err != nil {
		t.Fatalf("the queued record of No 7 lost its payload: %v", err)
	}
	got, err := io.ReadAll(r)
	if err != nil || string(got) != body {
		t.Fatalf("payload of No 7 reads %q, %v; want %q", got, err, body)
	}
}

// TestRepickAfterCrashKeepsQueuedPayload: a relay killed between the
// publish of No 7's record and the channel state's update leaves the record
// queued with PickedNo behind it; after the restart the file (never
// committed) is taken again while 1C writes its next message over it. The
// payload the queued record names stays (found by review: the re-put found
// the changed bytes and deleted it — No 7 dead at delivery, lost).
func TestRepickAfterCrashKeepsQueuedPayload(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	// No 7 stored and published; the relay died before taken.
	queueRecord(t, b, "SRC", "DST", 7)
	body := "No 7"
	again := pickedUp("SRC", "DST", 7, body)
	exchange.SetBody(again, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("No 8")), nil // 1C's next message, written over it
	})
	_ = p.ingestHandler("SRC", "test", p.pushLane)(again) // fails: changed while read; the source stays
	sum := sha256.Sum256([]byte(body))
	sha := hex.EncodeToString(sum[:])
	id := MessageID(exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 7}, sha)
	if info, err := b.Exchange.Info(context.Background()); err != nil || info.State.Msgs != 1 {
		t.Fatalf("stream: %+v, %v", info, err)
	}
	r, err := b.OpenKnownPayload(context.Background(), id, int64(len(body)), sha)
	if err != nil {
		t.Fatalf("the queued record of No 7 lost its payload to a re-pickup of its file: %v", err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != body {
		t.Fatalf("payload of No 7 reads %q, %v; want %q", got, err, body)
	}
}
