package bus

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/realserver"
)

// TestEnsureConsumerTakesOverLegacy: a relay started after the consumer
// names came to carry the domain takes its node's old consumer over: the
// new one starts after the old one's ack floor (the records acked stay
// done), the old one is removed (it would hold back PurgeDone), and a
// later start keeps the new one where it starts (JetStream cannot change
// that).
func TestEnsureConsumerTakesOverLegacy(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := jetstream.ConsumerConfig{
		FilterSubject: DeliverSubjects("Y"), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: time.Minute, MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	legacy := LegacyConsumerFor("deliver", "Y")
	old := cfg
	old.Durable = legacy
	oc, err := b.Exchange.CreateOrUpdateConsumer(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"1", "2", "3"} {
		if _, err := b.JS.Publish(ctx, Subject("P", "A", "Y"), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	batch, err := oc.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}

	cfg.Durable = ConsumerName("hq", "Y")
	for start := range 2 {
		c, err := EnsureConsumer(ctx, b.JS, StreamExchange, cfg, legacy)
		if err != nil {
			t.Fatalf("start %d: %v", start+1, err)
		}
		if _, err := b.Exchange.Consumer(ctx, legacy); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatalf("start %d: legacy consumer %s still there (%v)", start+1, legacy, err)
		}
		if start == 0 {
			batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for m := range batch.Messages() {
				if string(m.Data()) != "3" {
					t.Fatalf("the new consumer offered %q first, want record 3 (1 and 2 were acked)", m.Data())
				}
				_ = m.Nak()
			}
		}
	}
}

// TestLeafAckStaysInItsDomain: an office relay's embedded server is a leaf
// of the head office cluster, each with its own JetStream domain and its
// own EXCHANGE. Consumer names were the same in every domain
// (deliver_<node> for a node without `relay`, which every relay serves;
// fetch_<node> that the serving relay makes at every other relay), and
// nats-server's default (v1) ack subject, $JS.ACK.<stream>.<consumer>.
// <delivered>.<stream seq>.<consumer seq>..., names no domain. LeafDeny
// stops exchange.>, $O.> and $KV.> but not $JS.ACK.> (which the server
// forwards over leaf connections without permission checks): an ack the
// office sent for its own record acked the head office's record of the
// same sequence, which the head office had not delivered (a held message,
// one in flight): it was never offered again (found by review). The names
// carry the domain now (ConsumerName).
func TestLeafAckStaysInItsDomain(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hq, leafURL := hubAndHQ(ctx, t, log)
	office, err := Open(ctx, Settings{NATS: config.NATS{Leaf: &config.Leaf{URL: leafURL}}, DataDir: t.TempDir(), ID: "office1"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(office.Close)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err = Remote(ctx, office.Conn, "hq"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leaf not linked: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Node Y has no `relay`: both relays deliver it, each from its own
	// EXCHANGE through its own deliver_Y.
	consumer := func(b *Bus, id string) jetstream.Consumer {
		t.Helper()
		c, err := b.Exchange.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: ConsumerName(id, "Y"), FilterSubject: DeliverSubjects("Y"),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxDeliver: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	hqC, officeC := consumer(hq, "hq"), consumer(office, "office1")
	time.Sleep(time.Second) // interest crosses the leaf
	if _, err := hq.JS.Publish(ctx, Subject("P", "A", "Y"), []byte("hq record")); err != nil {
		t.Fatal(err)
	}
	if _, err := office.JS.Publish(ctx, Subject("P", "B", "Y"), []byte("office record")); err != nil {
		t.Fatal(err)
	}
	// The head office's delivery of its record is in flight (or held).
	_ = takeOne(t, hqC)
	time.Sleep(500 * time.Millisecond)
	if info, err := hqC.Info(ctx); err != nil || info.NumAckPending != 1 {
		t.Fatalf("control: hq deliver_Y before the office's ack: %+v, %v", info, err)
	}
	// The office delivers its own record and acks it.
	if err := takeOne(t, officeC).DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	info, err := hqC.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 1 || info.AckFloor.Stream != 0 {
		t.Fatalf("the office's ack of its own record acked the head office's undelivered record too: hq deliver_Y ack pending %d (want 1), ack floor stream seq %d (want 0)",
			info.NumAckPending, info.AckFloor.Stream)
	}
}

// TestFetchAckStaysInItsOffice: the everyday layout, no node without
// `relay`: node X is served by the head office, which fetches X's records
// from every office through a consumer named fetch_X in each office's
// domain. Its ack of office1's record also acked office2's record of the
// same sequence, which it was still copying: when that copy failed (a
// payload read cut by the link) its Nak found nothing pending, and office2
// never offered the record again (found by review). Named per domain now.
func TestFetchAckStaysInItsOffice(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hq, leafURL := hubAndHQ(ctx, t, log)
	office := func(id string) (*Bus, *Bus) {
		t.Helper()
		o, err := Open(ctx, Settings{NATS: config.NATS{Leaf: &config.Leaf{URL: leafURL}}, DataDir: t.TempDir(), ID: id}, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(o.Close)
		for deadline := time.Now().Add(20 * time.Second); ; {
			r, err := Remote(ctx, hq.Conn, id)
			if err == nil {
				return o, r
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not reachable from hq: %v", id, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	o1, r1 := office("office1")
	o2, r2 := office("office2")
	// As pipeline/fetch.go makes it.
	fetchX := func(r *Bus, id string) jetstream.Consumer {
		t.Helper()
		c, err := r.Exchange.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: ConsumerFor("fetch", "X", id), FilterSubject: DeliverSubjects("X"),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxDeliver: -1,
			DeliverPolicy: jetstream.DeliverAllPolicy, MaxAckPending: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := fetchX(r1, "office1"), fetchX(r2, "office2")
	time.Sleep(time.Second)
	if _, err := o1.JS.Publish(ctx, Subject("P", "O1", "X"), []byte("from office1")); err != nil {
		t.Fatal(err)
	}
	if _, err := o2.JS.Publish(ctx, Subject("P", "O2", "X"), []byte("from office2")); err != nil {
		t.Fatal(err)
	}
	m2 := takeOne(t, c2) // hq's session with office2: copying
	time.Sleep(500 * time.Millisecond)
	if info, err := c2.Info(ctx); err != nil || info.NumAckPending != 1 {
		t.Fatalf("control: office2 fetch_X before: %+v, %v", info, err)
	}
	if err := takeOne(t, c1).DoubleAck(ctx); err != nil { // hq's session with office1: done
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	// office2's copy fails: fetch.go Naks the record to have it again.
	if err := m2.Nak(); err != nil {
		t.Fatal(err)
	}
	batch, err := c2.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++
	}
	if n == 0 {
		info, _ := c2.Info(ctx)
		t.Fatalf("office2's record, Nak'd after a failed copy, is never offered again: hq's ack of office1's record (same sequence, same consumer name fetch_X) acked it (office2 fetch_X ack floor %d, pending %d)",
			info.AckFloor.Stream, info.NumAckPending)
	}
}

// takeOne takes the next record c offers, within 5 s.
func takeOne(t *testing.T, c jetstream.Consumer) jetstream.Msg {
	t.Helper()
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		return m
	}
	t.Fatal("no record")
	return nil
}

// hubAndHQ starts a head office server with leaf node port (leafURL) and
// opens the head office relay's bus on it, relay id hq.
func hubAndHQ(ctx context.Context, t *testing.T, log *slog.Logger) (*Bus, string) {
	t.Helper()
	hub, leafURL, err := realserver.StartHub(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	hq, err := Open(ctx, Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hq.Close)
	return hq, leafURL
}
