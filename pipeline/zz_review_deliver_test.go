package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/relay1c/relay/exchange"
	"io"
	"log/slog"
	"slices"

	"context"
	"encoding/json"
	"github.com/ThreeDotsLabs/watermill/message"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/relay1c/relay/bus"
)

// zzRig is startStateRig with the delivery lane's KV scripted by the caller.
func zzRig(t *testing.T, mode string, d *scriptedDelivery, rig *stateRig, kv *lossyKV) (run func()) {
	t.Helper()
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: `+mode+`, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	rig.p, rig.b, rig.d = p, b, d
	kv.KeyValue = b.Channels
	l := p.laneOn(b, p.log)
	l.states = p.states.on(kv)
	in := &inflight{}
	handle := p.deliverHandler("DST", p.cfg.Nodes["DST"], d, l, in)
	return func() { runStateRig(t, rig, handle, in) }
}

// TestZZStaleWriteAppliedAnswerLostCountedTwice: No 4 arrives after No 5
// was delivered and is dropped as stale. Its channel-state write reaches
// the KV but the answer is lost, and the KV stays unreachable for the
// read-backs Update makes (a few seconds): Update returns an error, the
// record is nacked. Offered again, it is judged against the relay's cached
// state (which lags: no RecentSeqs entry) and finished a second time:
// Stale and Resolved counted twice, pending wrong for good.
func TestZZStaleWriteAppliedAnswerLostCountedTwice(t *testing.T) {
	rig := &stateRig{}
	d := &scriptedDelivery{}
	var armed atomic.Bool
	var getFails atomic.Int32
	kv := &lossyKV{}
	kv.onUpdate = func(ctx context.Context, key string, v []byte, last uint64) (bool, uint64, error) {
		var c Channel
		_ = json.Unmarshal(v, &c)
		if c.Stale == 1 && armed.CompareAndSwap(false, true) {
			if _, err := kv.KeyValue.Update(ctx, key, v, last); err != nil {
				t.Errorf("setup: %v", err)
			}
			getFails.Store(6) // the KV unreachable a moment longer
			return true, 0, nats.ErrTimeout
		}
		return false, 0, nil
	}
	kv.onGet = func(ctx context.Context, key string) (bool, jetstream.KeyValueEntry, error) {
		if getFails.Add(-1) >= 0 {
			return true, nil, nats.ErrTimeout
		}
		return false, nil, nil
	}
	run := zzRig(t, "latest", d, rig, kv)
	ingestNo(t, rig.p, 5)
	ingestNo(t, rig.p, 4)
	run()
	c := zzWait(t, rig, 20*time.Second, func(c Channel) bool { return c.Resolved >= 2 && rig.failedRuns.Load() > 0 })
	time.Sleep(3 * time.Second)
	c = zzWait(t, rig, 0, func(Channel) bool { return true })
	if rig.failedRuns.Load() == 0 {
		t.Fatalf("setup: no failed run; state %+v", c)
	}
	if c.Stale != 1 || c.Resolved != 2 || c.Queued != 2 {
		t.Fatalf("2 queued (No 5 delivered, No 4 stale): want stale 1, resolved 2, queued 2; got stale %d, resolved %d, queued %d, delivered %v: the stale record, its write applied but unanswered, was counted again when offered again",
			c.Stale, c.Resolved, c.Queued, d.delivered())
	}
}

// zzWait is waitChannel reading through a States of its own, so that the
// test's reads do not refresh the pipeline's cache of channel states.
func zzWait(t *testing.T, rig *stateRig, within time.Duration, ok func(Channel) bool) Channel {
	t.Helper()
	s := NewStates(rig.b.Channels)
	var c Channel
	for deadline := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if c, err = s.Get(context.Background(), "P", "SRC", "DST"); err == nil && ok(c) || !time.Now().Before(deadline) {
			return c
		}
	}
}

// TestZZReplicaStateWriteFailedOlderAfterNewer: two replicas share the
// node's consumer on a shared NATS (leases set). On a latest channel No 6
// and No 5 are taken in out of order. Replica A delivers No 6 to a
// destination that cannot say what it holds, and its channel-state write
// fails: the outcome is kept in A's memory only (p.unrecorded) and the
// record nacked. Replica B takes the channel's next records: it judges No 5
// by the bucket (delivered No 0) and writes it after No 6, then No 6 again.
func TestZZReplicaStateWriteFailedOlderAfterNewer(t *testing.T) {
	b := testBus(t)
	d := &scriptedDelivery{}
	yaml := `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: latest, deliver: { dir: ./dst } }
`
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	in := &inflight{}
	mk := func(owner string, kv jetstream.KeyValue) (*Pipeline, func(*message.Message) error) {
		p := newPipeline(t, yaml, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
		p.leases = &leases{kv: b.Leases, owner: owner, ttl: 5 * time.Second, log: log}
		l := p.laneOn(b, p.log)
		l.states = p.states.on(kv)
		return p, p.deliverHandler("DST", p.cfg.Nodes["DST"], d, l, in)
	}
	var down atomic.Bool
	kvA := &lossyKV{KeyValue: b.Channels}
	kvA.onUpdate = func(ctx context.Context, key string, v []byte, last uint64) (bool, uint64, error) {
		if down.Load() {
			return true, 0, nats.ErrTimeout
		}
		return false, 0, nil
	}
	d.fail = func(no uint64, attempt int) error {
		if no == 6 && attempt == 1 {
			down.Store(true) // A's state write after this delivery fails
		}
		return nil
	}
	pA, handleA := mk("a", kvA)
	_, handleB := mk("b", b.Channels)
	ingestNo(t, pA, 6)
	ingestNo(t, pA, 5)

	// One consumer, records handed to A first, then (A busy elsewhere) to B:
	// as JetStream hands a nacked record to whichever replica pulls.
	nc := testConn(t, b)
	s := newTestSubscriber(t, nc, "DST", 5*time.Second, in)
	ctx, cancel := context.WithCancel(context.Background())
	out, err := s.Subscribe(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range out {
			handle := handleB
			if runs.Add(1) == 1 {
				handle = handleA
			}
			if err := handle(m); err != nil {
				m.Nack()
			} else {
				m.Ack()
			}
			down.Store(false)
		}
	}()
	t.Cleanup(func() { cancel(); closeWithin(t, s, 10*time.Second); <-done })

	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := NewStates(b.Channels).Get(context.Background(), "P", "SRC", "DST"); err == nil && c.Pending() == 0 && c.Resolved >= 2 {
			break
		}
	}
	time.Sleep(time.Second)
	got := d.delivered()
	if !slices.Equal(got, []uint64{6}) {
		t.Fatalf("latest channel, two replicas: the destination received %v, want [6]: replica A delivered No 6, its state write failed and the outcome stayed in A's memory; replica B, judging by the bucket, wrote No 5 after No 6 (and No 6 again)", got)
	}
}

// TestZZUnreadableRecordOneLetterAfterLostAck: a record the delivery cannot
// read (no header) is dead-lettered and acked; its ack is lost (the relay
// stopped right after the letter, or its AckWait passed) and JetStream offers
// it again: a second dead letter for the same record. The delivery's other
// letters are written once per record (DeadLetter.StreamSeq as Nats-Msg-Id).
func TestZZUnreadableRecordOneLetterAfterLostAck(t *testing.T) {
	rig := &stateRig{}
	var once atomic.Bool
	rig.loseAck = func(no uint64) bool { return no == 0 && once.CompareAndSwap(false, true) }
	run := startStateRig(t, "sequential", &scriptedDelivery{}, rig)
	if _, err := rig.b.JS.Publish(context.Background(), bus.Subject("P", "SRC", "DST"), []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	run()
	var ls []DeadLetter
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ls, _ = rig.p.Dead().List(context.Background())
		if rig.lost.Load() == 1 && len(ls) >= 1 {
			break
		}
	}
	time.Sleep(2 * time.Second) // the record's second offer has surely been handled
	ls, _ = rig.p.Dead().List(context.Background())
	if rig.lost.Load() != 1 {
		t.Fatalf("setup: no ack lost (letters %d)", len(ls))
	}
	if len(ls) != 1 {
		t.Fatalf("one unreadable record, its ack lost once: %d dead letters, want 1", len(ls))
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

// TestZZByNameSameFileTwiceLatestLost: a password zip (routed by name) is
// taken in twice while the first record still waits (`relay send` again, or
// the file put back, past the stream's 2-minute duplicate window): two
// records sharing one payload object (ingest keeps a payload stored whole).
// In latest mode the first is superseded by the second and its finish
// deletes the shared payload; the second then finds no payload and dies
// with nothing to retry: the message never reaches the node.
func TestZZByNameSameFileTwiceLatestLost(t *testing.T) {
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
