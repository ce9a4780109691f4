package pipeline

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// testBus starts an embedded NATS with JetStream on a temp dir.
func testBus(t *testing.T) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Settings{DataDir: t.TempDir(), ID: "test"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// testConn is a connection of its own, closed at cleanup (as the pipeline
// closes the delivery connection after the router).
func testConn(t *testing.T, b *bus.Bus) *nats.Conn {
	t.Helper()
	nc, err := b.NewConn(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// publishN publishes n records to node's delivery subjects, metadata n=0..n-1,
// as the ingest side does.
func publishN(t *testing.T, b *bus.Bus, node string, n int) {
	t.Helper()
	subject := bus.Subject("Plan", "SRC", node)
	for i := range n {
		m := message.NewMessage(watermill.NewUUID(), []byte("body "+strconv.Itoa(i)))
		m.Metadata.Set("n", strconv.Itoa(i))
		if _, _, err := publishRecord(context.Background(), b.JS, subject, m); err != nil {
			t.Fatal(err)
		}
	}
}

func newTestSubscriber(t *testing.T, nc *nats.Conn, node string, ackWait time.Duration, in *inflight) *consumerSubscriber {
	t.Helper()
	s, err := newConsumerSubscriber(consumerSubscriberConfig{
		Conn:   nc,
		Stream: bus.StreamExchange,
		Consumer: jetstream.ConsumerConfig{
			Durable:       bus.ConsumerName("r1", node),
			FilterSubject: bus.DeliverSubjects(node),
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			MaxDeliver:    -1,
			MaxAckPending: 64,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		},
		PullOptions:  deliveryPullOpts(),
		Unmarshaler:  stashUnmarshaler{in: in},
		CloseTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func receive(t *testing.T, out <-chan *message.Message, within time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-out:
		if !ok {
			t.Fatal("output closed")
		}
		return m
	case <-time.After(within):
		t.Fatalf("no message within %s", within)
		return nil
	}
}

// numDelivered reads the delivery count through the in-flight handle.
func numDelivered(t *testing.T, in *inflight, m *message.Message) uint64 {
	t.Helper()
	v, ok := in.msgs.Load(m.Metadata.Get(inflightKey))
	if !ok {
		t.Fatalf("message %s has no in-flight handle", m.UUID)
	}
	md, err := v.(jetstream.Msg).Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return md.NumDelivered
}

func closeWithin(t *testing.T, s message.Subscriber, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(d):
		t.Fatalf("Close did not return within %s", d)
	}
}

// Acked messages are gone, a nacked one comes back after the nak delay.
func TestConsumerAckNack(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	nc := testConn(t, b)
	publishN(t, b, "N1", 5)
	in := &inflight{}
	const nak = 300 * time.Millisecond
	s := newTestSubscriber(t, nc, "N1", 30*time.Second, in)
	defer closeWithin(t, s, 10*time.Second)

	out, err := s.Subscribe(context.Background(), "N1")
	if err != nil {
		t.Fatal(err)
	}
	// First deliveries come in stream order; the redelivery of the nacked
	// one comes after its nak delay, before or after the later ones (the
	// server prefers a due redelivery to the next new message).
	var nackedID string
	var nackedAt time.Time
	next := 0
	redelivered := false
	for next < 5 || !redelivered {
		m := receive(t, out, 5*time.Second)
		if nackedID != "" && m.UUID == nackedID {
			if redelivered {
				t.Fatalf("the nacked message came back twice")
			}
			redelivered = true
			if waited := time.Since(nackedAt); waited < nak-50*time.Millisecond {
				t.Fatalf("nacked message back after %s, nak delay is %s", waited, nak)
			}
			if n := numDelivered(t, in, m); n != 2 {
				t.Fatalf("redelivery count %d", n)
			}
			m.Ack()
			continue
		}
		if got := m.Metadata.Get("n"); got != strconv.Itoa(next) {
			t.Fatalf("message %d: n=%q (out of order?)", next, got)
		}
		if string(m.Payload) != "body "+strconv.Itoa(next) {
			t.Fatalf("payload %q", m.Payload)
		}
		if n := numDelivered(t, in, m); n != 1 {
			t.Fatalf("message %d delivered %d times", next, n)
		}
		if next == 2 {
			nackedID, nackedAt = m.UUID, time.Now()
			setNakDelay(m, nak)
			m.Nack()
		} else {
			m.Ack()
		}
		next++
	}

	select {
	case m := <-out:
		t.Fatalf("unexpected redelivery of n=%s", m.Metadata.Get("n"))
	case <-time.After(700 * time.Millisecond):
	}
	js, _ := jetstream.New(nc)
	c, err := js.Consumer(context.Background(), bus.StreamExchange, bus.ConsumerName("r1", "N1"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 || info.NumPending != 0 {
		t.Fatalf("consumer: %d ack pending, %d pending", info.NumAckPending, info.NumPending)
	}
	// The durable config is the one asked for.
	if info.Config.AckWait != 30*time.Second || info.Config.MaxAckPending != 64 || info.Config.FilterSubject != bus.DeliverSubjects("N1") {
		t.Fatalf("consumer config %+v", info.Config)
	}
}

// Closing while messages are in flight, by Close and by Subscribe's context
// at once (as the router does), never sends on a closed channel, and Close
// returns. watermill-nats v2.1.3's subscriber panics here.
func TestConsumerCloseStress(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	const msgs, rounds = 300, 30
	publishN(t, b, "N1", msgs)
	var handed, acked, nacked, unsettled atomic.Int64
	start := time.Now()
	for r := range rounds {
		nc, err := b.NewConn("stress")
		if err != nil {
			t.Fatal(err)
		}
		// A fresh durable each round, so every round has messages to take.
		node := "N1"
		in := &inflight{}
		cfg := func() *consumerSubscriber {
			s := newTestSubscriber(t, nc, node, time.Minute, in)
			s.consumer.Durable = "stress_" + strconv.Itoa(r)
			return s
		}
		ctx, cancel := context.WithCancel(context.Background())
		var subs []*consumerSubscriber
		var readers sync.WaitGroup
		var handlers sync.WaitGroup
		for range 2 {
			s := cfg()
			out, err := s.Subscribe(ctx, node)
			if err != nil {
				t.Fatal(err)
			}
			subs = append(subs, s)
			readers.Go(func() {
				for m := range out {
					handed.Add(1)
					handlers.Go(func() {
						select {
						case <-time.After(time.Duration(rand.IntN(400)) * time.Microsecond):
						case <-m.Context().Done():
							unsettled.Add(1)
							m.Nack()
							return
						}
						if rand.IntN(10) == 0 {
							nacked.Add(1)
							m.Nack()
						} else {
							acked.Add(1)
							m.Ack()
						}
					})
				}
			})
		}
		time.Sleep(time.Duration(2+rand.IntN(15)) * time.Millisecond)

		closed := make(chan struct{})
		go func() {
			var wg sync.WaitGroup
			wg.Go(cancel)
			for _, s := range subs {
				wg.Go(func() {
					if err := s.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				})
			}
			wg.Wait()
			readers.Wait() // every output channel closed
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close or output close did not finish", r)
		}
		handlers.Wait()
		for _, s := range subs {
			if err := s.Close(); err != nil { // idempotent
				t.Fatal(err)
			}
		}
		nc.Close()
	}
	t.Logf("%d rounds in %s: %d handed over, %d acked, %d nacked, %d cut off by close",
		rounds, time.Since(start).Round(time.Millisecond), handed.Load(), acked.Load(), nacked.Load(), unsettled.Load())
	if acked.Load() == 0 {
		t.Fatal("no message went through")
	}
}

// A message in flight when the subscriber closes is offered again to the
// next subscriber once AckWait runs out; none is lost.
func TestConsumerRedeliversInFlightAfterClose(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	nc := testConn(t, b)
	publishN(t, b, "N1", 3)
	const ackWait = 500 * time.Millisecond

	for _, how := range []string{"Close", "ctx"} {
		t.Run(how, func(t *testing.T) {
			in := &inflight{}
			node := "N1"
			a := newTestSubscriber(t, nc, node, ackWait, in)
			a.consumer.Durable = "redeliver_" + how
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out, err := a.Subscribe(ctx, node)
			if err != nil {
				t.Fatal(err)
			}
			held := receive(t, out, 5*time.Second) // the handler is busy with it
			if how == "Close" {
				closeWithin(t, a, 5*time.Second)
			} else {
				cancel()
			}
			select {
			case <-held.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("message context not cancelled at close")
			}
			for range out { // closed; anything still handed over is not acked
			}
			held.Ack() // too late: the subscriber has let it go
			closeWithin(t, a, 5*time.Second)

			bsub := newTestSubscriber(t, nc, node, ackWait, in)
			bsub.consumer.Durable = a.consumer.Durable
			defer closeWithin(t, bsub, 5*time.Second)
			out, err = bsub.Subscribe(context.Background(), node)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]uint64{}
			for len(seen) < 3 {
				m := receive(t, out, 5*time.Second)
				seen[m.Metadata.Get("n")] = numDelivered(t, in, m)
				m.Ack()
			}
			if seen[held.Metadata.Get("n")] < 2 {
				t.Fatalf("held message n=%s delivered %d times, want a redelivery", held.Metadata.Get("n"), seen[held.Metadata.Get("n")])
			}
			for i := range 3 {
				if _, ok := seen[strconv.Itoa(i)]; !ok {
					t.Fatalf("message n=%d lost (seen %v)", i, seen)
				}
			}
		})
	}
}

// Under a Watermill router the subscriber stops with the router, whether
// Run's context ends (the router may then not call Close) or Close is
// called, within the router's CloseTimeout.
func TestConsumerUnderRouter(t *testing.T) {
	b := testBus(t)
	publishN(t, b, "N1", 200)
	for _, how := range []string{"ctx", "Close"} {
		t.Run(how, func(t *testing.T) {
			nc := testConn(t, b)
			in := &inflight{}
			router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			var handled atomic.Int64
			var subs []*consumerSubscriber
			for i := range 2 {
				s := newTestSubscriber(t, nc, "N1", time.Minute, in)
				s.consumer.Durable = "router_" + how
				subs = append(subs, s)
				router.AddConsumerHandler("h"+strconv.Itoa(i), "N1", s, func(m *message.Message) error {
					handled.Add(1)
					select {
					case <-time.After(time.Duration(rand.IntN(2000)) * time.Microsecond):
						return nil
					case <-m.Context().Done():
						return m.Context().Err()
					}
				})
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ran := make(chan error, 1)
			go func() { ran <- router.Run(ctx) }()
			<-router.Running()
			for handled.Load() < 20 {
				time.Sleep(time.Millisecond)
			}
			t0 := time.Now()
			if how == "ctx" {
				cancel()
			} else if err := router.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-ran:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(8 * time.Second):
				t.Fatal("router did not stop")
			}
			if d := time.Since(t0); d > 3*time.Second {
				t.Fatalf("router took %s to stop", d)
			}
			for _, s := range subs {
				closeWithin(t, s, 5*time.Second)
			}
		})
	}
}
