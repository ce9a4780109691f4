package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// stateRig drives one node's delivery handler by hand, as the router does
// (an error nacks, nil acks), with the lane's channel-state writes going
// through a lossyKV whose writes fail while down is set: the KV briefly
// unavailable (every compare-and-set answered by a timeout, not applied).
type stateRig struct {
	p    *Pipeline
	b    *bus.Bus
	d    *scriptedDelivery
	down atomic.Bool
	// failedRuns counts handler runs that returned an error.
	failedRuns atomic.Int32
	// loseAck, when set, says the ack of a record resolved (handler nil,
	// not held) is lost: JetStream offers it again a second later, as
	// after its AckWait.
	loseAck func(no uint64) bool
	lost    atomic.Int32
}

// startStateRig wires the rig; the returned run starts the delivery (records
// queued before it are all in the stream when it starts).
func startStateRig(t *testing.T, mode string, d *scriptedDelivery, rig *stateRig) (run func()) {
	t.Helper()
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: `+mode+`, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	rig.p, rig.b, rig.d = p, b, d
	kv := &lossyKV{KeyValue: b.Channels}
	kv.onUpdate = func(ctx context.Context, key string, v []byte, last uint64) (bool, uint64, error) {
		if rig.down.Load() {
			return true, 0, nats.ErrTimeout
		}
		return false, 0, nil
	}
	l := p.laneOn(b, p.log)
	l.states = p.states.on(kv)
	in := &inflight{}
	handle := p.deliverHandler("DST", p.cfg.Nodes["DST"], d, l, in)
	return func() { runStateRig(t, rig, handle, in) }
}

func runStateRig(t *testing.T, rig *stateRig, handle func(m *message.Message) error, in *inflight) {
	t.Helper()
	nc := testConn(t, rig.b)
	s := newTestSubscriber(t, nc, "DST", 5*time.Second, in)
	ctx, cancel := context.WithCancel(context.Background())
	out, err := s.Subscribe(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range out {
			held := false
			err := handle(m)
			if err == nil {
				held = m.Metadata.Get(nakDelayKey) != ""
			}
			switch h, _ := exchange.HeaderOf(m); {
			case err != nil:
				rig.failedRuns.Add(1)
				m.Nack()
			case !held && rig.loseAck != nil && rig.loseAck(h.MessageNo):
				rig.lost.Add(1)
				setNakDelay(m, time.Second) // back as after a lost ack
				m.Nack()
			default:
				m.Ack()
			}
			// The outage lasts for this one run only.
			rig.down.Store(false)
		}
	}()
	t.Cleanup(func() { cancel(); closeWithin(t, s, 10*time.Second); <-done })
}

// ingestNo takes message No no of SRC → DST in as a pickup of SRC would.
func ingestNo(t *testing.T, p *Pipeline, no uint64) {
	t.Helper()
	if err := p.ingestHandler("SRC", "test", p.pushLane)(pickedUp("SRC", "DST", no, "<message "+strconv.FormatUint(no, 10)+"/>")); err != nil {
		t.Fatal(err)
	}
}

// TestStateWriteFailedNotDeliveredTwice: on a sequential channel to a
// destination that cannot say what it holds (mail, HTTP), No 1 is
// delivered (SMTP 250 / HTTP 2xx) and then the channel-state write fails
// (the KV briefly unavailable). The record is nacked; its redelivery
// judged by the state alone, which still said nothing was delivered, and
// sent No 1 a second time, by a relay that never stopped (found by
// review). The outcome is kept and written first now.
func TestStateWriteFailedNotDeliveredTwice(t *testing.T) {
	rig := &stateRig{}
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 1 && attempt == 1 {
			rig.down.Store(true) // the destination has it; the state write that follows fails
		}
		return nil
	}}
	run := startStateRig(t, "sequential", d, rig)
	ingestNo(t, rig.p, 1)
	ingestNo(t, rig.p, 2)
	run()

	c := waitChannel(t, rig.p, "P", 20*time.Second, func(c Channel) bool { return c.DeliveredNo == 2 && c.Pending() == 0 })
	got := d.delivered()
	if rig.failedRuns.Load() == 0 {
		t.Fatalf("setup: the state write never failed (delivered %v)", got)
	}
	if !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("sequential channel: the destination received %v, want [1 2]: No 1 was delivered, its state write failed, and the redelivered record sent it again (state: delivered No %d, duplicates %d, resolved %d)",
			got, c.DeliveredNo, c.Duplicates, c.Resolved)
	}
}

// TestStateWriteFailedNoOlderAfterNewer: on a latest channel, No 6 and
// No 5 are taken in out of order (mails arriving No 6 first: both are
// queued, TestQueuedCountsOutOfOrderPickup). No 6 is delivered to a
// destination that cannot say what it holds, and its state write fails.
// No 5 was then judged against the state (delivered No 0) and the newest
// queued record (No 5 itself): delivered after No 6, and No 6 a second
// time after it (found by review).
func TestStateWriteFailedNoOlderAfterNewer(t *testing.T) {
	rig := &stateRig{}
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 6 && attempt == 1 {
			rig.down.Store(true)
		}
		return nil
	}}
	run := startStateRig(t, "latest", d, rig)
	ingestNo(t, rig.p, 6)
	ingestNo(t, rig.p, 5)
	run()

	c := waitChannel(t, rig.p, "P", 20*time.Second, func(c Channel) bool { return c.Pending() == 0 && c.DeliveredNo == 6 })
	time.Sleep(500 * time.Millisecond)
	got := d.delivered()
	if rig.failedRuns.Load() == 0 {
		t.Fatalf("setup: the state write never failed (delivered %v)", got)
	}
	i6, i5 := slices.Index(got, 6), slices.Index(got, 5)
	if i6 >= 0 && i5 > i6 {
		t.Fatalf("latest channel: the destination received %v: No 5 was delivered after No 6 (an older message after a newer one), because No 6's state write failed after its delivery (state: delivered No %d, stale %d, superseded %d)",
			got, c.DeliveredNo, c.Stale, c.Superseded)
	}
	if n := len(got) - len(slices.Compact(slices.Clone(got))); n > 0 || len(got) != 1 {
		t.Fatalf("latest channel: the destination received %v, want [6]", got)
	}
}

// TestLostAckOfSupersededCountedOnce: a record whose ack is lost is acked
// without being counted again (README). On a latest channel No 4 and No 5
// are superseded by No 6 (failing at the destination). No 4's ack is lost;
// offered again after No 5 was resolved, it was superseded and counted a
// second time: the resolved records' sequences were only looked at for
// numbers <= DeliveredNo, and the channel showed nothing pending while
// No 6 still waited (found by review).
func TestLostAckOfSupersededCountedOnce(t *testing.T) {
	rig := &stateRig{}
	var once atomic.Bool
	rig.loseAck = func(no uint64) bool { return no == 4 && once.CompareAndSwap(false, true) }
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		if no == 6 {
			return errors.New("destination down")
		}
		return nil
	}}
	run := startStateRig(t, "latest", d, rig)
	for _, no := range []uint64{4, 5, 6} {
		ingestNo(t, rig.p, no)
	}
	run()
	c := waitChannel(t, rig.p, "P", 10*time.Second, func(c Channel) bool { return c.Superseded >= 3 })
	time.Sleep(2 * time.Second) // No 4's second offer has surely been handled
	c, err := rig.p.States().Get(context.Background(), "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if rig.lost.Load() != 1 {
		t.Fatalf("setup: no ack lost (delivered %v)", d.delivered())
	}
	if c.Superseded != 2 || c.Resolved != 2 || c.Pending() != 1 {
		t.Fatalf("3 queued, No 4 and No 5 superseded, No 6 still failing: want superseded 2, resolved 2, pending 1; got superseded %d, resolved %d, pending %d (queued %d): No 4, offered again after its lost ack, was counted twice",
			c.Superseded, c.Resolved, c.Pending(), c.Queued)
	}
}

// TestRequeuedAfterDeathDelivered: No 4 dies at delivery (the destination
// refused it for good). The same file is then taken in again (relay send
// once the destination was fixed, or re-picked past the stream's 2-minute
// duplicate window): a new record with the same message id. Its first
// attempt fails; offered a second time, it was taken for the dead record
// (the channel's LastMsgID) offered again after a lost ack, and acked:
// never delivered, and the sequential channel held behind dead No 4 for
// good (found by review). A record is known by its stream sequence now.
func TestRequeuedAfterDeathDelivered(t *testing.T) {
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, attempt int) error {
		switch {
		case no == 4 && attempt == 1:
			return exchange.Permanent(errors.New("550 refused for good"))
		case no == 4 && attempt == 2:
			return errors.New("451 try again later")
		}
		return nil
	}}
	queueRecord(t, b, "SRC", "DST", 4)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 10*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("setup: No 4 did not die: %+v", c)
	}
	queueRecordAgain(t, b, "SRC", "DST", 4) // the same message, queued anew
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 4 })
	if got := d.delivered(); !slices.Equal(got, []uint64{4}) {
		d.mu.Lock()
		tries := d.seen[4]
		d.mu.Unlock()
		waiting := -1
		if cons, err := b.Exchange.Consumer(context.Background(), bus.ConsumerName("r1", "DST")); err == nil {
			if ci, err := cons.Info(context.Background()); err == nil {
				waiting = ci.NumAckPending + int(ci.NumPending)
			}
		}
		t.Fatalf("No 4 queued again after its death: the destination received %v (attempts of No 4: %d; records still waiting in the consumer: %d), want [4]; state: delivered No %d, dead No %d, resolved %d, last error %q — the second record was acked as \"resolved already\" because its id equals the dead record's LastMsgID",
			got, tries, waiting, c.DeliveredNo, c.DeadNo, c.Resolved, c.LastError)
	}
}

// scriptedKVRig is startStateRig with the delivery lane's KV scripted by the caller.
func scriptedKVRig(t *testing.T, mode string, d *scriptedDelivery, rig *stateRig, kv *lossyKV) (run func()) {
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

// TestStaleWriteAppliedAnswerLostCountedOnce: No 4 arrives after No 5
// was delivered and is dropped as stale. Its channel-state write reaches
// the KV but the answer is lost, and the KV stays unreachable for the
// read-backs Update makes (a few seconds): Update returns an error, the
// record is nacked. Offered again, it was judged against the relay's cached
// state (which lags: no RecentSeqs entry) and finished a second time:
// Stale and Resolved counted twice, pending wrong for good (found by
// review). finish now writes nothing for a record the state lists.
func TestStaleWriteAppliedAnswerLostCountedOnce(t *testing.T) {
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
	run := scriptedKVRig(t, "latest", d, rig, kv)
	ingestNo(t, rig.p, 5)
	ingestNo(t, rig.p, 4)
	run()
	waitOwnRead(t, rig, 20*time.Second, func(c Channel) bool { return c.Resolved >= 2 && rig.failedRuns.Load() > 0 })
	time.Sleep(3 * time.Second)
	c := waitOwnRead(t, rig, 0, func(Channel) bool { return true })
	if rig.failedRuns.Load() == 0 {
		t.Fatalf("setup: no failed run; state %+v", c)
	}
	if c.Stale != 1 || c.Resolved != 2 || c.Queued != 2 {
		t.Fatalf("2 queued (No 5 delivered, No 4 stale): want stale 1, resolved 2, queued 2; got stale %d, resolved %d, queued %d, delivered %v: the stale record, its write applied but unanswered, was counted again when offered again",
			c.Stale, c.Resolved, c.Queued, d.delivered())
	}
}

// waitOwnRead is waitChannel reading through a States of its own, so that the
// test's reads do not refresh the pipeline's cache of channel states.
func waitOwnRead(t *testing.T, rig *stateRig, within time.Duration, ok func(Channel) bool) Channel {
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

// TestUnreadableRecordOneLetterAfterLostAck: a record the delivery cannot
// read (no header) is dead-lettered and acked; its ack is lost (the relay
// stopped right after the letter, or its AckWait passed) and JetStream offers
// it again: a second dead letter for the same record (found by review). Its
// letter carries its stream sequence now, the Nats-Msg-Id the delivery's
// other letters have.
func TestUnreadableRecordOneLetterAfterLostAck(t *testing.T) {
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

// TestReplicaStateWriteFailedKeepsChannel: two replicas share the
// node's consumer on a shared NATS (leases set). On a latest channel No 6
// and No 5 are taken in out of order. Replica A delivers No 6 to a
// destination that cannot say what it holds, and its channel-state write
// fails: the outcome is kept in A's memory only (p.unrecorded) and the
// record nacked. Replica B took the channel's next records: it judged No 5
// by the bucket (delivered No 0) and wrote it after No 6, then No 6 again
// (found by review). A keeps the channel's lease until the outcome is
// written: B waits.
func TestReplicaStateWriteFailedKeepsChannel(t *testing.T) {
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
