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

// sealedZip is a pipeline with channel SRC → DST (latest) and a sealed
// zip's content: a message routed by name, whose payload object (id) all
// records of the same content share.
type sealedZip struct {
	p             *Pipeline
	b             *bus.Bus
	h             exchange.Header
	body, sha, id string
}

func newSealedZip(t *testing.T) *sealedZip {
	t.Helper()
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: latest, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	z := &sealedZip{p: p, b: b, h: exchange.Header{Dialect: exchange.DialectName, From: "SRC", To: "DST"}, body: "sealed zip"}
	sum := sha256.Sum256([]byte(z.body))
	z.sha = hex.EncodeToString(sum[:])
	z.id = MessageID(z.h, z.sha)
	return z
}

// take is the zip as a pickup of SRC hands it to ingest.
func (z *sealedZip) take(ctx context.Context) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), nil)
	exchange.SetHeader(m, z.h)
	m.Metadata.Set(exchange.MetaNode, "SRC")
	m.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	m.Metadata.Set(exchange.MetaSource, "test:Message_SRC_DST.zip")
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(z.body)))
	m.Metadata.Set(exchange.MetaSHA256, z.sha)
	m.SetContext(ctx)
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(z.body)), nil })
	return m
}

// queuedPastWindow stores the payload and queues a record naming it whose
// Nats-Msg-Id is long forgotten (queued past the duplicate window: a take
// of the same file now is a new record); returns its sequence.
func (z *sealedZip) queuedPastWindow(t *testing.T) uint64 {
	t.Helper()
	ctx := context.Background()
	if _, _, err := z.b.PutPayload(ctx, z.id, int64(len(z.body)), strings.NewReader(z.body)); err != nil {
		t.Fatal(err)
	}
	rec := message.NewMessage(z.id, nil)
	exchange.SetHeader(rec, z.h)
	rec.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	rec.Metadata.Set(exchange.MetaObject, z.id)
	rec.Metadata.Set(exchange.MetaSHA256, z.sha)
	rec.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(z.body)))
	nm, err := (&wmnats.NATSMarshaler{}).Marshal(bus.Subject("", "SRC", "DST"), rec)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := z.b.JS.PublishMsg(ctx, nm, jetstream.WithMsgID(z.id+"#past-window"))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// lastSeq is the sequence of the channel's last record.
func (z *sealedZip) lastSeq(t *testing.T) uint64 {
	t.Helper()
	last, err := z.b.Exchange.GetLastMsgForSubject(context.Background(), bus.Subject("", "SRC", "DST"))
	if err != nil {
		t.Fatal(err)
	}
	return last.Sequence
}

// stored says the payload is stored whole.
func (z *sealedZip) stored(t *testing.T) bool {
	t.Helper()
	has, err := z.b.HasPayload(context.Background(), z.id, int64(len(z.body)), z.sha)
	if err != nil {
		t.Fatal(err)
	}
	return has
}

// TestByNameRetakenAsItsFirstRecordFinishes: a message routed by name (a
// sealed zip) whose first record waited past the duplicate window is taken
// in again (same content: the same payload object) just as the first
// record resolves. finish's laterNames looked for a later record naming
// the payload, found none yet, and queued the delete behind the dropper;
// ingest meanwhile found the payload stored whole, skipped its put and
// queued a second record; the late delete removed the payload under it,
// and the message was lost (found by review). A by-name payload is deleted
// at once now, under a lock ingest takes too.
func TestByNameRetakenAsItsFirstRecordFinishes(t *testing.T) {
	ctx := context.Background()
	z := newSealedZip(t)
	seq1 := z.queuedPastWindow(t)
	l := z.p.laneOn(z.b, z.p.log)
	gate := make(chan struct{})
	l.dropper = newDropper(func(ctx context.Context, name string) error {
		<-gate // the dropper is behind (its queue, three requests a delete)
		return z.b.DeletePayload(ctx, name)
	}, z.p.log)
	if err := l.finish(ctx, z.h, seq1, z.id, z.id, func(c *Channel) {}); err != nil {
		t.Fatal(err)
	}
	out, err := z.p.ingest("SRC", "dir", l, z.take(ctx))
	if err != nil || out.Result != OutcomeQueued {
		t.Fatalf("second take: %+v, %v (want queued)", out, err)
	}
	close(gate)
	l.dropper.close()
	if seq := z.lastSeq(t); seq <= seq1 || !z.stored(t) {
		t.Fatalf("the record queued at seq %d names payload %s, which the first record's drop deleted: the message is lost", seq, z.id)
	}
}

// hookedStream runs atEnd once, when a GetMsg finds nothing further: the
// end of laterNames' scan, which has just concluded "no later record".
type hookedStream struct {
	jetstream.Stream
	once  sync.Once
	atEnd func()
}

func (s *hookedStream) GetMsg(ctx context.Context, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error) {
	m, err := s.Stream.GetMsg(ctx, seq, opts...)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		s.once.Do(s.atEnd)
	}
	return m, err
}

// hookedStore runs after once, right after the first GetInfo (ingest's
// look for the payload) answered.
type hookedStore struct {
	jetstream.ObjectStore
	once  sync.Once
	after func()
}

func (s *hookedStore) GetInfo(ctx context.Context, name string, opts ...jetstream.GetObjectInfoOpt) (*jetstream.ObjectInfo, error) {
	i, err := s.ObjectStore.GetInfo(ctx, name, opts...)
	s.once.Do(s.after)
	return i, err
}

// waitShortly gives done a second to close: long enough for a step that
// is not held back to finish, short for one that waits for a lock.
func waitShortly(done <-chan struct{}) {
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

// waitDone waits for done; a step that never ends fails the test.
func waitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the step started by the hook did not end (the hook did not run, or a lock is never given back)")
	}
}

// TestByNameRetakeBetweenLookAndDelete: the same file taken in again
// while a finishing record of its content is between its look for a
// later record (none) and its delete: the retake found the payload stored,
// queued its record and looked again before the delete came, which then
// removed the payload under it (found by review of the first fix, which
// put a payload gone by the second look again). The retake waits for the
// finish now (payloadLocks): it finds the payload gone and puts it.
func TestByNameRetakeBetweenLookAndDelete(t *testing.T) {
	ctx := context.Background()
	z := newSealedZip(t)
	seq1 := z.queuedPastWindow(t)
	var out Outcome
	var ingErr error
	done := make(chan struct{})
	exchangeStream := z.b.Exchange
	z.b.Exchange = &hookedStream{Stream: exchangeStream, atEnd: func() {
		go func() {
			defer close(done)
			out, ingErr = z.p.ingest("SRC", "dir", z.p.pushLane, z.take(ctx))
		}()
		waitShortly(done)
	}}
	defer func() { z.b.Exchange = exchangeStream }()
	if err := z.p.laneOn(z.b, z.p.log).finish(ctx, z.h, seq1, z.id, z.id, func(c *Channel) {}); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done)
	if ingErr != nil || out.Result != OutcomeQueued {
		t.Fatalf("retake: %+v, %v (want queued)", out, ingErr)
	}
	if seq := z.lastSeq(t); seq <= seq1 || !z.stored(t) {
		t.Fatalf("record seq %d names payload %s, deleted by the first record's finish after its look: the message is lost", seq, z.id)
	}
}

// TestByNameDuplicateLeavesNoPayload: the same file taken in again within
// the duplicate window makes no record (stored_before). Its payload, put
// because the first record's finish had deleted it, or put "again" as the
// first fix did when the first record finished between the look and the
// publish, named nothing and stayed for good (found by review). And the
// outcome's detail showed "No 0" for a message that has no number.
func TestByNameDuplicateLeavesNoPayload(t *testing.T) {
	ctx := context.Background()
	t.Run("finished before", func(t *testing.T) {
		z := newSealedZip(t)
		if out, err := z.p.ingest("SRC", "api", z.p.pushLane, z.take(ctx)); err != nil || out.Result != OutcomeQueued {
			t.Fatalf("first take: %+v, %v", out, err)
		}
		if err := z.p.laneOn(z.b, z.p.log).finish(ctx, z.h, z.lastSeq(t), z.id, z.id, func(c *Channel) {}); err != nil {
			t.Fatal(err)
		}
		out, err := z.p.ingest("SRC", "api", z.p.pushLane, z.take(ctx))
		if err != nil || out.Result != OutcomeStoredBefore || strings.Contains(out.Detail, "No ") {
			t.Fatalf("taken again: %+v, %v (want stored_before, without a number)", out, err)
		}
		if z.stored(t) {
			t.Fatalf("stored_before, no record queued, yet payload %s is stored: an orphan", z.id)
		}
	})
	t.Run("finishing meanwhile", func(t *testing.T) {
		z := newSealedZip(t)
		if out, err := z.p.ingest("SRC", "api", z.p.pushLane, z.take(ctx)); err != nil || out.Result != OutcomeQueued {
			t.Fatalf("first take: %+v, %v", out, err)
		}
		seq1 := z.lastSeq(t)
		done := make(chan struct{})
		store := z.b.Payloads
		z.b.Payloads = &hookedStore{ObjectStore: store, after: func() {
			go func() {
				defer close(done)
				if err := z.p.laneOn(z.b, z.p.log).finish(ctx, z.h, seq1, z.id, z.id, func(c *Channel) {}); err != nil {
					t.Error(err)
				}
			}()
			waitShortly(done)
		}}
		defer func() { z.b.Payloads = store }()
		out, err := z.p.ingest("SRC", "dir", z.p.laneOn(z.b, z.p.log), z.take(ctx))
		waitDone(t, done)
		if err != nil || out.Result != OutcomeStoredBefore || z.lastSeq(t) != seq1 {
			t.Fatalf("taken again: %+v, %v (want stored_before, no record)", out, err)
		}
		if z.stored(t) {
			t.Fatalf("payload %s stored for a duplicate whose only record finished: an orphan", z.id)
		}
	})
}
