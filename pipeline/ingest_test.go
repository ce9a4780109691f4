package pipeline

import (
	"context"
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
