package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// tagDelivery records the "tag" metadata (or the key's) of the messages it
// takes, in order, and fails the attempts fail says to.
type tagDelivery struct {
	key   string // metadata to record; "" is "tag"
	mu    sync.Mutex
	got   []string
	tries map[string]int
	fail  func(tag string, attempt int) error
}

func (d *tagDelivery) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		key := d.key
		if key == "" {
			key = "tag"
		}
		tag := m.Metadata.Get(key)
		d.mu.Lock()
		if d.tries == nil {
			d.tries = map[string]int{}
		}
		d.tries[tag]++
		attempt := d.tries[tag]
		d.mu.Unlock()
		if d.fail != nil {
			if err := d.fail(tag, attempt); err != nil {
				return err
			}
		}
		d.mu.Lock()
		d.got = append(d.got, tag)
		d.mu.Unlock()
	}
	return nil
}

func (d *tagDelivery) Close() error { return nil }

func (d *tagDelivery) delivered() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.got)
}

// queueByName puts a record of a message routed by its file name (a
// password-protected zip no password reads) on channel SRC → DST, as
// ingest would: no plan, no numbers.
func queueByName(t *testing.T, b *bus.Bus, tag string) {
	t.Helper()
	h := exchange.Header{Dialect: exchange.DialectName, From: "SRC", To: "DST"}
	m := message.NewMessage(MessageID(h, "sha-"+tag), nil)
	exchange.SetHeader(m, h)
	m.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	m.Metadata.Set("tag", tag)
	if _, _, err := publishRecord(context.Background(), b.JS, bus.Subject("", "SRC", "DST"), m); err != nil {
		t.Fatal(err)
	}
}

// Messages routed by name have no MessageNo: their order is the order they
// were queued in. In latest mode the newest queued one supersedes the
// others, and one of them coming up after it is stale; none is dropped as
// "the destination has this number".
func TestByNameLatest(t *testing.T) {
	b := testBus(t)
	for _, tag := range []string{"a", "b", "c"} {
		queueByName(t, b, tag)
	}
	d := &tagDelivery{}
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	c := waitChannel(t, p, "", 15*time.Second, func(c Channel) bool { return c.Resolved == 3 })
	// a and b are superseded if they come up before c, stale if after (the
	// node's two workers take them side by side).
	if got := d.delivered(); !slices.Equal(got, []string{"c"}) || c.Superseded+c.Stale != 2 || c.NameSeq == 0 {
		t.Fatalf("delivered %v, want [c]; state %+v", got, c)
	}
	// A message queued later still goes: it is newer than all resolved.
	queueByName(t, b, "d")
	c = waitChannel(t, p, "", 15*time.Second, func(c Channel) bool { return c.Resolved == 4 })
	if got := d.delivered(); !slices.Equal(got, []string{"c", "d"}) {
		t.Fatalf("delivered %v, want [c d]; state %+v", got, c)
	}
}

// In sequential mode every message routed by name is delivered, in the
// order it was queued: one that fails holds the ones queued after it, and
// an older one never lands over a newer one.
func TestByNameSequential(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	for _, tag := range []string{"a", "b", "c"} {
		queueByName(t, b, tag)
	}
	d := &tagDelivery{fail: func(tag string, attempt int) error {
		if tag == "a" && attempt == 1 {
			return errors.New("destination busy")
		}
		return nil
	}}
	p := runSequential(t, b, d)
	c := waitChannel(t, p, "", 20*time.Second, func(c Channel) bool { return c.Resolved == 3 })
	if got := d.delivered(); !slices.Equal(got, []string{"a", "b", "c"}) || c.Stale+c.Superseded+c.Duplicates != 0 {
		t.Fatalf("delivered %v, want [a b c]; state %+v", got, c)
	}
}

// bodyDelivery reads each message's payload, as real adapters do, and
// records what it read.
type bodyDelivery struct {
	mu    sync.Mutex
	got   []string
	calls int
	fail  func(call int) error
}

func (d *bodyDelivery) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		d.mu.Lock()
		d.calls++
		call := d.calls
		d.mu.Unlock()
		if d.fail != nil {
			if err := d.fail(call); err != nil {
				return err
			}
		}
		r, err := exchange.Body(m.Context(), m)
		if err != nil {
			return fmt.Errorf("open payload: %w", err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			return err
		}
		d.mu.Lock()
		d.got = append(d.got, string(b))
		d.mu.Unlock()
	}
	return nil
}

func (d *bodyDelivery) Close() error { return nil }

// TestByNameSameFileTwiceLatestKept: a password zip (routed by name) is
// taken in twice while the first record still waits (`relay send` again, or
// the file put back, past the stream's 2-minute duplicate window): two
// records sharing one payload object (ingest keeps a payload stored whole).
// In latest mode the first is superseded by the second, and its finish
// deleted the shared payload; the second then found no payload and died
// with nothing to retry: the message never reached the node (found by
// review). A payload a later record of the channel names is kept.
func TestByNameSameFileTwiceLatestKept(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	queueByNameStored(t, b, "sealed zip")
	// The same file again, past the duplicate window: a record of its own.
	h := exchange.Header{Dialect: exchange.DialectName, From: "SRC", To: "DST"}
	sum := sha256.Sum256([]byte("sealed zip"))
	sha := hex.EncodeToString(sum[:])
	id := MessageID(h, sha)
	if has, err := b.HasPayload(ctx, id, int64(len("sealed zip")), sha); err != nil || !has {
		t.Fatalf("setup: payload kept %v, %v", has, err)
	}
	m := message.NewMessage(id, nil)
	exchange.SetHeader(m, h)
	m.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	m.Metadata.Set(exchange.MetaObject, id)
	m.Metadata.Set(exchange.MetaSHA256, sha)
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len("sealed zip")))
	nm, err := (&wmnats.NATSMarshaler{}).Marshal(bus.Subject("", "SRC", "DST"), m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.JS.PublishMsg(ctx, nm, jetstream.WithMsgID(id+"#later")); err != nil {
		t.Fatal(err)
	}
	// The node's destination is down at first (why the file was sent again).
	d := &bodyDelivery{fail: func(call int) error {
		if call == 1 {
			return errors.New("destination down")
		}
		return nil
	}}
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: latest, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	c := waitChannel(t, p, "", 15*time.Second, func(c Channel) bool { return c.Resolved >= 2 })
	ls, _ := p.Dead().List(ctx)
	d.mu.Lock()
	got := slices.Clone(d.got)
	d.mu.Unlock()
	if len(got) != 1 || len(ls) != 0 {
		reasons := []string{}
		for _, l := range ls {
			reasons = append(reasons, l.Reason+" (object "+strconv.Quote(l.Object)+")")
		}
		t.Fatalf("one sealed zip queued twice, latest mode: delivered %q, dead letters %v (state: resolved %d, superseded %d, dead %d); want it delivered once, no dead letter",
			got, reasons, c.Resolved, c.Superseded, c.Dead)
	}
}

// TestByNameRetakenAsItsFirstRecordFinishes: a message routed by name (a
// sealed zip) whose first record waited past the duplicate window is taken
// in again (same content: the same payload object) just as the first
// record resolves. finish's laterNames looked for a later record naming
// the payload, found none yet, and queued the delete behind the dropper;
// ingest meanwhile found the payload stored whole, skipped its put and
// queued a second record; the late delete removed the payload under it,
// and the message was lost (found by review). A by-name payload is deleted
// at once now, and ingest puts one that vanished after its look again.
func TestByNameRetakenAsItsFirstRecordFinishes(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: latest, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	const body = "sealed zip"
	h := exchange.Header{Dialect: exchange.DialectName, From: "SRC", To: "DST"}
	sum := sha256.Sum256([]byte(body))
	sha := hex.EncodeToString(sum[:])
	id := MessageID(h, sha)
	if _, _, err := b.PutPayload(ctx, id, int64(len(body)), strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	rec := message.NewMessage(id, nil)
	exchange.SetHeader(rec, h)
	rec.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	rec.Metadata.Set(exchange.MetaObject, id)
	rec.Metadata.Set(exchange.MetaSHA256, sha)
	rec.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	nm, err := (&wmnats.NATSMarshaler{}).Marshal(bus.Subject("", "SRC", "DST"), rec)
	if err != nil {
		t.Fatal(err)
	}
	// Its Nats-Msg-Id long forgotten (queued past the duplicate window).
	ack, err := b.JS.PublishMsg(ctx, nm, jetstream.WithMsgID(id+"#past-window"))
	if err != nil {
		t.Fatal(err)
	}
	seq1 := ack.Sequence

	l := p.laneOn(b, p.log)
	gate := make(chan struct{})
	l.dropper = newDropper(func(ctx context.Context, name string) error {
		<-gate // the dropper is behind (its queue, three requests a delete)
		return b.DeletePayload(ctx, name)
	}, p.log)
	// The first record resolves (delivered): laterNames sees no later record.
	if err := l.finish(ctx, h, seq1, id, id, func(c *Channel) {}); err != nil {
		t.Fatal(err)
	}
	// The same file is taken in again meanwhile.
	m := message.NewMessage(watermill.NewUUID(), nil)
	exchange.SetHeader(m, h)
	m.Metadata.Set(exchange.MetaNode, "SRC")
	m.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	m.Metadata.Set(exchange.MetaSource, "test:Message_SRC_DST.zip")
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	m.Metadata.Set(exchange.MetaSHA256, sha)
	m.SetContext(ctx)
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil })
	out, err := p.ingest("SRC", "dir", l, m)
	if err != nil || out.Result != OutcomeQueued {
		t.Fatalf("second take: %+v, %v (want queued)", out, err)
	}
	close(gate)
	l.dropper.close()
	last, err := b.Exchange.GetLastMsgForSubject(ctx, bus.Subject("", "SRC", "DST"))
	if err != nil || last.Sequence <= seq1 || last.Header.Get(exchange.MetaObject) != id {
		t.Fatalf("setup: second record %v, %v", last, err)
	}
	has, err := b.HasPayload(ctx, id, int64(len(body)), sha)
	if err != nil {
		t.Fatal(err)
	}
	if !has {
		t.Fatalf("the record queued at seq %d names payload %s, which the first record's background drop deleted: its delivery cannot open the body, the message is lost", last.Sequence, id)
	}
}
