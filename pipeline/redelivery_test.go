package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// scriptedDelivery is a deliver adapter that records the MessageNo of every
// message it took, in order, and fails the attempts fail says to.
type scriptedDelivery struct {
	mu   sync.Mutex
	got  []uint64
	fail func(no uint64, attempt int) error
	seen map[uint64]int
}

func (d *scriptedDelivery) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		h, err := exchange.HeaderOf(m)
		if err != nil {
			return err
		}
		d.mu.Lock()
		if d.seen == nil {
			d.seen = map[uint64]int{}
		}
		d.seen[h.MessageNo]++
		attempt := d.seen[h.MessageNo]
		d.mu.Unlock()
		if d.fail != nil {
			if err := d.fail(h.MessageNo, attempt); err != nil {
				return err
			}
		}
		d.mu.Lock()
		d.got = append(d.got, h.MessageNo)
		d.mu.Unlock()
	}
	return nil
}

func (d *scriptedDelivery) Close() error { return nil }

// diesFirst is a scriptedDelivery whose first attempt of No no is refused
// for good (a dead letter); everything else is delivered.
func diesFirst(no uint64) *scriptedDelivery {
	return &scriptedDelivery{fail: func(n uint64, attempt int) error {
		if n == no && attempt == 1 {
			return exchange.Permanent(errors.New("refused for good"))
		}
		return nil
	}}
}

func (d *scriptedDelivery) delivered() []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]uint64(nil), d.got...)
}

type scriptedEndpoints map[string]message.Publisher

func (e scriptedEndpoints) Pickup(node string, _ *config.Endpoint, _ *Memory, _ *slog.Logger) (message.Subscriber, error) {
	return nil, errors.New("no pickup in this test")
}

func (e scriptedEndpoints) Deliver(node string, _ *config.Endpoint, _ *slog.Logger) (message.Publisher, error) {
	return e[node], nil
}

// runPipeline starts a pipeline for yaml on b until the test ends.
func runPipeline(t *testing.T, yaml string, b *bus.Bus, eps Endpoints) *Pipeline {
	t.Helper()
	p := newPipeline(t, yaml, b, eps)
	runUntilEnd(t, p)
	return p
}

// testConfig parses yaml, with the data folder (a dead letter's retry
// spools there) in the test's temp folder.
func testConfig(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Relay.DataDir = t.TempDir()
	return cfg
}

// runUntilEnd runs p until the test ends.
func runUntilEnd(t *testing.T, p *Pipeline) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
}

// queueRecord puts a record for channel P: from → to on the EXCHANGE
// stream, with a small payload, as ingest would (scriptedDelivery does not
// read the payload; a dead letter's retry needs it).
func queueRecord(t *testing.T, b *bus.Bus, from, to string, no uint64) {
	t.Helper()
	m := storedRecord(t, b, from, to, no)
	if _, _, err := publishRecord(context.Background(), b.JS, bus.Subject("P", from, to), m); err != nil {
		t.Fatal(err)
	}
}

// storedRecord stores the payload of message No no of from → to (plan P)
// and returns its record, not yet published.
func storedRecord(t *testing.T, b *bus.Bus, from, to string, no uint64) *message.Message {
	t.Helper()
	h := exchange.Header{ExchangePlan: "P", From: from, To: to, MessageNo: no}
	body := "No " + strconv.FormatUint(no, 10)
	sum := sha256.Sum256([]byte(body))
	sha := hex.EncodeToString(sum[:])
	id := MessageID(h, sha)
	if _, _, err := b.PutPayload(context.Background(), id, int64(len(body)), strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(id, nil)
	exchange.SetHeader(m, h)
	m.Metadata.Set(exchange.MetaFileName, exchange.FileName(from, to, exchange.FormatXML))
	m.Metadata.Set(exchange.MetaObject, id)
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	m.Metadata.Set(exchange.MetaSHA256, sha)
	return m
}

// A sequential channel's first messages: No 1 fails once (the destination
// hiccups), and No 2, queued behind it, must wait for it rather than be
// written first, which would make No 1 stale and lose it.
func TestSequentialFirstMessageNotOvertaken(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 1 && attempt == 1 {
			return errors.New("destination busy")
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecord(t, b, "SRC", "DST", 2)
	p := runSequential(t, b, d)

	c := waitChannel(t, p, "P", 20*time.Second, func(c Channel) bool { return c.Resolved >= 2 && c.DeliveredNo == 2 })
	got := d.delivered()
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("sequential channel delivered %v, want [1 2]; state %+v", got, c)
	}
}

// TestDeliveryCutByStopIsNoFailure: a delivery an adapter cuts short
// because relay is stopping (a pull node's parked message, exchange.
// ErrStopping) is offered again later, and the channel shows no error: it
// showed "relay stopping" as its last error after every restart until the
// next delivery (found by review).
func TestDeliveryCutByStopIsNoFailure(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	var tries atomic.Int32
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		tries.Add(1)
		return fmt.Errorf("http_pull DST: Message_SRC_DST.xml: %w", exchange.ErrStopping)
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	for deadline := time.Now().Add(20 * time.Second); tries.Load() < 2 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if tries.Load() < 2 {
		t.Fatal("the message cut short was not offered again")
	}
	c, err := p.States().Get(context.Background(), "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.LastError != "" || c.DeliveredNo != 0 {
		t.Fatalf("channel after deliveries cut by a stop: last error %q, delivered No %d", c.LastError, c.DeliveredNo)
	}
}

// runSequential runs a pipeline whose node DST is sequential and delivers
// through d (SRC is only there to send from).
func runSequential(t *testing.T, b *bus.Bus, d message.Publisher) *Pipeline {
	t.Helper()
	return runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
}

// waitChannel polls the state of channel plan: SRC → DST until ok or within
// has passed, and returns the last state read.
func waitChannel(t *testing.T, p *Pipeline, plan string, within time.Duration, ok func(Channel) bool) Channel {
	t.Helper()
	var c Channel
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if c, err = p.States().Get(context.Background(), plan, "SRC", "DST"); err == nil && ok(c) {
			break
		}
	}
	return c
}

// newPipeline wires (without running) a pipeline for yaml on b; closed at
// the test's end.
func newPipeline(t *testing.T, yaml string, b *bus.Bus, eps Endpoints) *Pipeline {
	t.Helper()
	p, err := New(testConfig(t, yaml), b, eps, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

// pickedUp is a message as a pickup of from hands it to ingest.
func pickedUp(from, to string, no uint64, body string) *message.Message {
	h := exchange.Header{ExchangePlan: "P", From: from, To: to, MessageNo: no}
	m := message.NewMessage(watermill.NewUUID(), nil)
	exchange.SetHeader(m, h)
	sum := sha256.Sum256([]byte(body))
	m.Metadata.Set(exchange.MetaFileName, exchange.FileName(from, to, exchange.FormatXML))
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	m.Metadata.Set(exchange.MetaSHA256, hex.EncodeToString(sum[:]))
	m.Metadata.Set(exchange.MetaSource, "test:"+strconv.FormatUint(no, 10))
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(body)), nil
	})
	return m
}

// Two messages of a channel picked up out of order (mails arriving No 6
// before No 5) are both queued: both are counted, so that once both are
// resolved the channel shows nothing pending, and while one waits it shows.
func TestQueuedCountsOutOfOrderPickup(t *testing.T) {
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	ingest := p.ingestHandler("SRC", "test", p.pushLane)
	for _, no := range []uint64{6, 5} {
		if err := ingest(pickedUp("SRC", "DST", no, "<message "+strconv.FormatUint(no, 10)+"/>")); err != nil {
			t.Fatal(err)
		}
	}
	info, err := b.Exchange.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.States().Get(context.Background(), "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 || c.Queued != 2 || c.PickedNo != 6 {
		t.Fatalf("%d records in the stream; channel queued %d (want 2), picked No %d (want 6)", info.State.Msgs, c.Queued, c.PickedNo)
	}
	// The same file picked up again (a crash before its source was
	// committed) is one record, counted once.
	if err := ingest(pickedUp("SRC", "DST", 5, "<message 5/>")); err != nil {
		t.Fatal(err)
	}
	if c, _ = p.States().Get(context.Background(), "P", "SRC", "DST"); c.Queued != 2 {
		t.Fatalf("a re-pickup was counted again: queued %d, want 2", c.Queued)
	}
}

// The office relay fetched a record, dropped the head office's payload and
// lost the link before its ack reached the head office; meanwhile the
// record was delivered here and its payload dropped. The head office offers
// the record again: its payload is in neither domain, but the message is
// delivered, so that is no dead letter.
func TestFetchAgainAfterDeliveryIsNoDeadLetter(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	hb, ob, cfg := officeAndHub(ctx, t, log)

	// Here: No 4 of HQ1 → OFF delivered, its payload dropped.
	off := &scriptedDelivery{}
	p, err := New(cfg, ob, scriptedEndpoints{"OFF": off}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.States().Update(ctx, "P", "HQ1", "OFF", func(c *Channel) {
		c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 4, 4, 1, 1
	}); err != nil {
		t.Fatal(err)
	}
	// There: the record of No 4, its payload dropped by the first fetch;
	// then No 5, with its payload.
	for _, no := range []uint64{4, 5} {
		h := exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: no}
		id := MessageID(h, "x")
		m := message.NewMessage(id, nil)
		exchange.SetHeader(m, h)
		m.Metadata.Set(exchange.MetaFileName, "Message_HQ1_OFF.xml")
		m.Metadata.Set(exchange.MetaObject, id)
		m.Metadata.Set(exchange.MetaSize, "3")
		if no == 5 {
			if _, _, err := hb.PutPayload(ctx, id, 3, strings.NewReader("<a/")); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := publishRecord(ctx, hb.JS, bus.Subject("P", "HQ1", "OFF"), m); err != nil {
			t.Fatal(err)
		}
	}

	runUntilEnd(t, p)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if got := off.delivered(); len(got) == 1 && got[0] == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("No 5 not fetched and delivered; delivered %v", off.delivered())
		}
		time.Sleep(50 * time.Millisecond)
	}
	dls, err := p.Dead().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dls {
		t.Errorf("dead letter for a message already delivered: %s", d.Reason)
	}
}

// A delivery whose ack is lost (the relay killed right after recording
// it) is offered again by JetStream. It was counted as resolved once: the
// second offer must not count it again (nor as a duplicate the sender
// sent), or the channel shows one message fewer pending from then on.
func TestRedeliveryOfResolvedRecordNotCountedTwice(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	d := &scriptedDelivery{}
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	ctx := context.Background()
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 1, 1 }); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 1)

	in := &inflight{}
	nc := testConn(t, b)
	handle := p.deliverHandler("DST", p.cfg.Nodes["DST"], d, p.laneOn(b, p.log), in)
	// First offer: delivered and recorded, then the relay stops before
	// the ack.
	s1 := newTestSubscriber(t, nc, "DST", time.Second, in)
	out, err := s1.Subscribe(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := handle(receive(t, out, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	closeWithin(t, s1, 10*time.Second)
	// Offered again after the ack wait; this time the ack goes through.
	s := newTestSubscriber(t, nc, "DST", time.Second, in)
	defer closeWithin(t, s, 10*time.Second)
	if out, err = s.Subscribe(ctx, ""); err != nil {
		t.Fatal(err)
	}
	m := receive(t, out, 10*time.Second)
	if n := numDelivered(t, in, m); n != 2 {
		t.Fatalf("offered %d times, want 2", n)
	}
	if err := handle(m); err != nil {
		t.Fatal(err)
	}
	m.Ack()
	c, err := p.States().Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if got := d.delivered(); len(got) != 1 {
		t.Errorf("delivered %v, want [1]", got)
	}
	if c.Resolved != 1 || c.Duplicates != 0 || c.Pending() != 0 {
		t.Fatalf("after one message and its redelivery: queued %d, resolved %d (want 1), duplicates %d (want 0)", c.Queued, c.Resolved, c.Duplicates)
	}
}

// A message held for a while (here: handed back by the node four times)
// and then failing once is tried again after the first step of the
// backoff, not after one sized by every time it was offered: its holds are
// not failures. (A sequential channel's next message, held through a
// failover and then failing once, waited minutes while the channel stood.)
func TestHeldThenFailedRetriedSoon(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	var mu sync.Mutex
	var failedAt, retriedAt time.Time
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case attempt <= 4:
			return exchange.ErrNotTaken
		case attempt == 5:
			failedAt = time.Now()
			return errors.New("destination busy")
		case attempt == 6:
			retriedAt = time.Now()
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)

	waitChannel(t, p, "P", 30*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 })
	mu.Lock()
	defer mu.Unlock()
	if retriedAt.IsZero() {
		t.Fatalf("not delivered within 30s (failed at %v)", failedAt)
	}
	if waited := retriedAt.Sub(failedAt); waited > 5*time.Second {
		t.Fatalf("retried %s after its first failure; the backoff counted its holds", waited.Round(time.Millisecond))
	}
}

// A sequential channel whose destination already holds a newer message
// (put there by another transport, or restored) answers the queued ones as
// stale: they are dropped, and the channel moves past them to the numbers
// the destination does not have yet, rather than holding the next one for
// good as a gap behind a number that can never be delivered.
func TestSequentialStaleMovesChannelOn(t *testing.T) {
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, _ int) error {
		if no < 10 {
			return fmt.Errorf("deliver: %w", &exchange.StaleError{Where: "in/Message_SRC_DST.xml", Have: 10, No: no})
		}
		return nil
	}}
	for _, no := range []uint64{3, 4, 11} {
		queueRecord(t, b, "SRC", "DST", no)
	}
	p := runSequential(t, b, d)

	// 4, below the destination's 10 once 3 told it, may be answered after
	// 11 is delivered: all three resolved is the end.
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 11 && c.Resolved == 3 })
	if got := d.delivered(); len(got) != 1 || got[0] != 11 || c.Stale != 2 || c.Resolved != 3 {
		t.Fatalf("delivered %v, want [11]; state: delivered No %d, stale %d, resolved %d, error %q", got, c.DeliveredNo, c.Stale, c.Resolved, c.LastError)
	}
}

// A message that dies at delivery on a sequential channel holds the
// numbers after it, whether the channel delivered anything before it or
// not, and however long it waits (its record purged from the stream
// meanwhile): the addressee needs every number. Retried and delivered, it
// lets the channel go on; dropped, the channel goes on without it, and the
// message's trace says the operator dropped it.
func TestSequentialDeadLetterHolds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		queued []uint64
		dies   uint64 // dies at its first attempt
		retry  bool   // else dropped
		want   []uint64
	}{
		{"first message retried", []uint64{5, 6}, 5, true, []uint64{5, 6}},
		{"first message dropped", []uint64{5, 6}, 5, false, []uint64{6}},
		{"after a delivered one, retried", []uint64{1, 2, 3}, 2, true, []uint64{1, 2, 3}},
		{"after a delivered one, dropped", []uint64{1, 2, 3}, 2, false, []uint64{1, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := testBus(t)
			d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
				if no == tc.dies && attempt == 1 {
					return exchange.Permanent(errors.New("refused for good"))
				}
				return nil
			}}
			deadSeq := uint64(0)
			for i, no := range tc.queued {
				queueRecord(t, b, "SRC", "DST", no)
				if no == tc.dies {
					deadSeq = uint64(i + 1) // the only records in the stream
				}
			}
			p := runSequential(t, b, d)
			c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeadNo == tc.dies })
			if c.DeadNo != tc.dies || c.Dead != 1 {
				t.Fatalf("state %+v: want No %d dead and holding", c, tc.dies)
			}
			// The sweep purges done records a day on; the hold must not
			// end with them.
			if err := b.Exchange.Purge(ctx, jetstream.WithPurgeSubject(bus.Subject("P", "SRC", "DST")), jetstream.WithPurgeSequence(deadSeq+1)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2*holdDelay + 500*time.Millisecond)
			if got := d.delivered(); len(got) > 0 && got[len(got)-1] > tc.dies {
				t.Fatalf("delivered %v past dead No %d", got, tc.dies)
			}
			c, err := p.States().Get(ctx, "P", "SRC", "DST")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(c.LastError, fmt.Sprintf("No %d is a dead letter", tc.dies)) {
				t.Fatalf("last error %q: want the hold on dead No %d told", c.LastError, tc.dies)
			}
			ls, err := p.Dead().List(ctx)
			if err != nil || len(ls) != 1 {
				t.Fatalf("dead letters %+v, %v: want one", ls, err)
			}
			if tc.retry {
				_, err = p.Retry(ctx, ls[0].Seq)
			} else {
				err = p.DropDead(ctx, ls[0].Seq)
			}
			if err != nil {
				t.Fatal(err)
			}
			last := tc.queued[len(tc.queued)-1]
			c = waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == last })
			if got := d.delivered(); !slices.Equal(got, tc.want) || c.DeadNo != 0 || c.Pending() != 0 {
				t.Fatalf("delivered %v, want %v; state %+v", got, tc.want, c)
			}
			if !tc.retry {
				if c.DroppedNo != tc.dies {
					t.Fatalf("dropped No %d, want %d", c.DroppedNo, tc.dies)
				}
				evs, err := p.Trace(ctx, TraceQuery{Match: ls[0].MsgID})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(evs, func(e Event) bool { return e.Step == StepDropped && strings.Contains(e.Detail, "operator") }) {
					t.Fatalf("trace %+v: no drop by the operator", evs)
				}
			}
		})
	}
}

// TestInPlaceCountsAsDelivered: a delivery that finds the message in place
// (written by an attempt the relay did not live to record) is recorded as
// delivered, with one delivered event that says so, and the channel goes on.
func TestInPlaceCountsAsDelivered(t *testing.T) {
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, _ int) error {
		if no == 1 {
			return fmt.Errorf("dir DST: in/Message_SRC_DST.xml holds No 1 already: %w", exchange.ErrInPlace)
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecord(t, b, "SRC", "DST", 2)
	p := runSequential(t, b, d)
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 2 })
	if got := d.delivered(); c.DeliveredNo != 2 || c.Resolved != 2 || c.Stale+c.Duplicates != 0 || len(got) != 1 || got[0] != 2 || c.LastError != "" {
		t.Fatalf("written %v, state %+v; want No 1 taken as delivered, No 2 written after it", got, c)
	}
	var evs []Event
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if evs, err = p.Trace(context.Background(), TraceQuery{Node: "DST"}); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Step == StepDelivered {
				n++
			}
		}
		if n == 2 {
			break
		}
	}
	var inPlace, delivered int
	for _, e := range evs {
		if e.Step == StepDelivered {
			delivered++
			if e.No == 1 && strings.Contains(e.Detail, "found in place") {
				inPlace++
			}
		}
	}
	if delivered != 2 || inPlace != 1 {
		t.Fatalf("events %+v: want two delivered, No 1's saying it was found in place", evs)
	}
}

// A sequential channel with a gap (No 2 comes late: a mail delayed, a
// pickup that failed for a while) holds the numbers after it. Once 64 of
// them were held, the node's consumer had 64 messages waiting for their ack
// (each hold is a delayed nak, and MaxAckPending was 64) and JetStream
// offered it nothing new: not the missing No 2 (the hold never ended), nor
// any other channel's message for the node.
func TestHeldMessagesDoNotStallNode(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 1)
	for no := uint64(3); no <= 66; no++ {
		queueRecord(t, b, "SRC", "DST", no)
	}
	p := runSequential(t, b, d)
	waitChannel(t, p, "P", 20*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 })
	time.Sleep(3 * time.Second) // the later numbers are held now

	queueRecord(t, b, "OTHER", "DST", 1) // another sender's channel to DST
	queueRecord(t, b, "SRC", "DST", 2)   // the missing number

	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c, _ := p.States().Get(ctx, "P", "SRC", "DST")
		o, _ := p.States().Get(ctx, "P", "OTHER", "DST")
		if c.DeliveredNo == 66 && o.DeliveredNo == 1 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	c, _ := p.States().Get(ctx, "P", "SRC", "DST")
	o, _ := p.States().Get(ctx, "P", "OTHER", "DST")
	got := d.delivered()
	t.Fatalf("after 30s: SRC→DST delivered No %d (want 66, error %q), OTHER→DST delivered No %d (want 1); No 2 written: %v",
		c.DeliveredNo, c.LastError, o.DeliveredNo, slices.Contains(got, 2))
}

// TestRetryAfterProgress: a message's waits grow with its failures (1 s,
// 2 s, 4 s ... up to the maximum), and start again from the shortest after
// an attempt that got part of the file through (exchange.Progressed): a
// server taking a few mails of a split file at a time, then refusing the
// rest for a while (a rate limit), saw the waits grow to minutes and the
// set begun again after an hour, for ever (found by review).
func TestRetryAfterProgress(t *testing.T) {
	in := &inflight{}
	plain := errors.New("451 try later")
	var got []time.Duration
	for _, err := range []error{plain, plain, plain, plain, exchange.Progressed(plain), plain, plain} {
		got = append(got, in.retryAfter("m1", err, 5*time.Minute))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, time.Second, 2 * time.Second, 4 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("waits %v, want %v", got, want)
	}
	if in.retryAfter("m2", exchange.Permanent(plain), time.Minute) != time.Second {
		t.Fatal("another message's waits are its own")
	}
}
