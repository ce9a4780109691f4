package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// A fetch session that ends in the middle of a batch (the relay is killed,
// the link drops, the fetch lease is lost, a copy fails) leaves the rest of
// its batch unacknowledged at the other relay until the consumer's AckWait
// (a minute) runs out. The next session must not copy the records queued
// after them first: on a sequential channel that has not delivered yet, the
// later number goes out first and the earlier ones become "stale" — lost.
//
// Here the crashed session is played by pulling one batch of 16 from the
// office's fetch consumer at the head office and never acking it.
func TestFetchKeepsOrderAfterInterruptedBatch(t *testing.T) {
	t.Parallel()
	const fetchWait = 5 * time.Second
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	hb, ob, _ := officeAndHub(ctx, t, log)
	cfg := twoRelays(t, "office1", "sequential")

	const n = 20
	for no := uint64(1); no <= n; no++ {
		queueRecord(t, hb, "HQ1", "OFF", no)
	}

	// The session that died: it took a batch and acked nothing.
	remote, err := bus.Remote(ctx, ob.Conn, "hq")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := remote.Exchange.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       fetchConsumer("OFF", "hq"),
		Description:   "relay " + cfg.Relay.ID + " fetches the messages for node OFF",
		FilterSubject: bus.DeliverSubjects("OFF"),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       fetchWait,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(16, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	taken := 0
	for range batch.Messages() {
		taken++ // never acked: the relay died here
	}
	if taken != 16 {
		t.Fatalf("the crashed session took %d records, want 16", taken)
	}

	// The relay comes back.
	d := &scriptedDelivery{}
	p, err := New(cfg, ob, scriptedEndpoints{"OFF": d}, log, Options{AckWait: 5 * time.Second, FetchAckWait: fetchWait})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)

	// Wait until every record is resolved at the office (the unacked batch
	// comes back after the consumer's AckWait of a minute).
	var st Channel
	deadline := time.Now().Add(fetchWait + 40*time.Second)
	for time.Now().Before(deadline) {
		if st, err = p.States().Get(ctx, "P", "HQ1", "OFF"); err == nil && st.Resolved >= n {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	got := d.delivered()
	want := make([]uint64, 0, n)
	for no := uint64(1); no <= n; no++ {
		want = append(want, no)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sequential node OFF got Nos %v, want %v in order; channel state: delivered_no %d, resolved %d of %d, stale %d (stale = dropped, never delivered)",
			got, want, st.DeliveredNo, st.Resolved, n, st.Stale)
	}
}

// putRecord stores, on b, the record of message h with the payload body
// under its object name, as ingest (or a fetch) would; withPayload false
// leaves the payload out (the other relay already dropped it).
func putRecord(t *testing.T, b *bus.Bus, h exchange.Header, body string, withPayload bool) string {
	t.Helper()
	sum := sha256.Sum256([]byte(body))
	sha := hex.EncodeToString(sum[:])
	id := MessageID(h, sha)
	if withPayload {
		if _, _, err := b.PutPayload(context.Background(), id, int64(len(body)), strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	m := message.NewMessage(id, nil)
	exchange.SetHeader(m, h)
	ext := exchange.FormatXML
	if h.ByName() {
		ext = exchange.FormatZip
	}
	m.Metadata.Set(exchange.MetaFileName, exchange.FileName(h.From, h.To, ext))
	m.Metadata.Set(exchange.MetaObject, id)
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	m.Metadata.Set(exchange.MetaSHA256, sha)
	if _, _, err := publishRecord(context.Background(), b.JS, bus.Subject(h.ExchangePlan, h.From, h.To), m); err != nil {
		t.Fatal(err)
	}
	return id
}

// fetchedAll waits until the office's fetch consumer at the head office has
// acked everything it was offered.
func fetchedAll(ctx context.Context, t *testing.T, hb *bus.Bus, node string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c, err := hb.Exchange.Consumer(ctx, fetchConsumer(node, "hq"))
		if err == nil {
			if ci, err := c.Info(ctx); err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 && ci.Delivered.Stream > 0 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the office never acked the head office's record")
}

// gone waits up to d for the payload obj to be gone from b.
func payloadGone(ctx context.Context, b *bus.Bus, obj string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := b.Payloads.GetInfo(ctx, obj); errors.Is(err, jetstream.ErrObjectNotFound) {
			return true
		}
	}
	return false
}

// A fetch copied the payload and took the record in here, then stopped
// (relay killed, link down) before it dropped the head office's payload and
// acked. Meanwhile the message is delivered here and its payload dropped.
// When the head office offers the record again, the fetch copies the payload
// in once more, finds the record a duplicate, acks — and the fresh copy of
// the payload stays in EXCHANGE_PAYLOADS for good: nothing refers to it and
// no sweep removes it (a lost gigabyte per incident on a flaky link).
func TestFetchAgainLeavesNoOrphanPayload(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hb, ob, cfg := officeAndHub(ctx, t, log)

	h := exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: 1}
	body := strings.Repeat("<v8msg/>", 100)
	// What the interrupted fetch left here: the payload and the record.
	obj := putRecord(t, ob, h, body, true)

	_, d := deliverTaken(t, cfg, ob, log)
	if got := d.delivered(); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("delivered %v, want [1]", got)
	}
	if !payloadGone(ctx, ob, obj, 10*time.Second) {
		t.Fatal("the delivered message's payload was not dropped")
	}

	// The head office still holds the record and its payload (never acked):
	// it offers them again.
	putRecord(t, hb, h, body, true)
	fetchedAll(ctx, t, hb, "OFF")
	time.Sleep(time.Second)

	if got := d.delivered(); !slices.Equal(got, []uint64{1}) {
		t.Errorf("delivered %v, want [1] (once)", got)
	}
	if info, err := ob.Payloads.GetInfo(ctx, obj); err == nil {
		t.Fatalf("payload %s (%d bytes) copied in again after its message was delivered, and left in EXCHANGE_PAYLOADS with nothing referring to it", obj, info.Size)
	}
}

// The same interruption one step later: the fetch dropped the head office's
// payload but its ack was lost. For a message routed by its file name (an
// encrypted zip without a configured password: no number), the fetch then
// finds the payload in neither domain and makes the message — which was
// delivered — a dead letter: "payload ... is gone from relay hq". The
// operator sees a lost message that is not lost, and a retry of it has no
// bytes to send.
func TestFetchAgainByNameNoFalseDeadLetter(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hb, ob, cfg := officeAndHub(ctx, t, log)

	h := exchange.Header{Dialect: exchange.DialectName, From: "HQ1", To: "OFF"}
	body := "PK sealed zip"
	obj := putRecord(t, ob, h, body, true)

	p, d := deliverTaken(t, cfg, ob, log)
	if got := d.delivered(); len(got) != 1 {
		t.Fatalf("delivered %v, want one message", got)
	}
	if !payloadGone(ctx, ob, obj, 10*time.Second) {
		t.Fatal("the delivered message's payload was not dropped")
	}

	// The head office offers the record again; its payload was dropped there.
	putRecord(t, hb, h, body, false)
	fetchedAll(ctx, t, hb, "OFF")
	time.Sleep(time.Second)

	dls, err := p.Dead().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, dl := range dls {
		t.Errorf("a delivered message became a dead letter: %q", dl.Reason)
	}
	if got := d.delivered(); len(got) != 1 {
		t.Errorf("delivered %d times, want once", len(got))
	}
}

// deliverTaken runs the office relay (cfg, on ob) until it has delivered
// something, and returns it and its delivery of OFF.
func deliverTaken(t *testing.T, cfg *config.Config, ob *bus.Bus, log *slog.Logger) (*Pipeline, *scriptedDelivery) {
	t.Helper()
	d := &scriptedDelivery{}
	p, err := New(cfg, ob, scriptedEndpoints{"OFF": d, "HQ1": &scriptedDelivery{}}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
	waitFor := time.Now().Add(20 * time.Second)
	for len(d.delivered()) == 0 && time.Now().Before(waitFor) {
		time.Sleep(50 * time.Millisecond)
	}
	return p, d
}

// TestFetchTroubleShown: a fetch that cannot reach the other relay (here a
// relay id no JetStream domain answers to) is logged once, then at debug
// level; `relay status` shows it as the node's delivery error, since the
// node's messages wait there.
func TestFetchTroubleShown(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, ob, _ := officeAndHub(ctx, t, log)
	cfg := testConfig(t, `relay: { id: office1, listen: "127.0.0.1:1" }
nodes:
  HQ1: { relay: nowhere, deliver: { dir: ./hq1 } }
  OFF: { relay: office1, deliver: { dir: ./off } }
`)
	p, err := New(cfg, ob, scriptedEndpoints{"OFF": &scriptedDelivery{}}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
	var deliver string
	for deadline := time.Now().Add(30 * time.Second); deliver == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		_, deliver = p.EndpointErrors("OFF")
	}
	if !strings.HasPrefix(deliver, "fetch from relay nowhere: ") {
		t.Fatalf("delivery error of OFF: %q, want the fetch from relay nowhere's trouble", deliver)
	}
	t.Logf("shown: %s", deliver)
}
