package bus

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestPurgeDone: only records every reader of their node has acked, and
// older than the age given, go; a backlog stays however old, and so do the
// records of a node nobody reads.
func TestPurgeDone(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publish := func(to string) uint64 {
		t.Helper()
		ack, err := b.JS.Publish(ctx, Subject("P", "X", to), []byte(to))
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	consumer := func(name, filter string) jetstream.Consumer {
		t.Helper()
		c, err := b.Exchange.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: name, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy,
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// ack takes the next n records of c and acks those at the sequences in acked.
	ack := func(c jetstream.Consumer, n int, acked ...uint64) {
		t.Helper()
		batch, err := c.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			if slices.Contains(acked, md.Sequence.Stream) {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got != n {
			t.Fatalf("fetched %d records, want %d", got, n)
		}
	}
	left := func(want ...uint64) {
		t.Helper()
		var seqs []uint64
		for seq := uint64(1); ; seq++ {
			m, err := b.Exchange.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(SubjectPrefix+">"))
			if err != nil {
				break
			}
			seqs = append(seqs, m.Sequence)
			seq = m.Sequence
		}
		if !slices.Equal(seqs, want) {
			t.Fatalf("records left %v, want %v", seqs, want)
		}
	}

	a1, b1, a2 := publish("A"), publish("B"), publish("A")
	time.Sleep(time.Second)
	young := time.Now()
	a3, a4 := publish("A"), publish("A")
	deliverA := consumer(ConsumerName("r", "A"), DeliverSubjects("A"))
	watch := consumer("watch", SubjectPrefix+">") // reads node A's records too
	ack(deliverA, 3, a1, a2, a3)                  // a4 waits: its node's backlog
	ack(watch, 5, a1, b1, a2, a3, a4)

	if err := b.PurgeDone(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	left(a1, b1, a2, a3, a4) // all younger than an hour

	if err := b.PurgeDone(ctx, time.Since(young)+500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// a1 and a2 are done and older; a3 is done but younger; node B has no
	// reader of its own (watch only holds purges back).
	left(b1, a3, a4)

	if err := b.PurgeDone(ctx, 0); err != nil {
		t.Fatal(err)
	}
	left(b1, a4) // a4 is not acked

	// A second reader of node A that has acked nothing (the fetch consumer
	// of another relay) holds back every record of A.
	a5 := publish("A")
	ack(deliverA, 2, a4, a5)
	consumer("fetch_A", DeliverSubjects("A"))
	if err := b.PurgeDone(ctx, 0); err != nil {
		t.Fatal(err)
	}
	left(b1, a4, a5)
}

// TestExchangeHasNoAgeLimit: a stream made with the 30-day limit an earlier
// version set loses it at the next start, so an unacked record is never
// aged out.
func TestExchangeHasNoAgeLimit(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := openAt(t, dir)
	cfg := b.Exchange.CachedInfo().Config
	cfg.MaxAge = 30 * 24 * time.Hour
	if _, err := b.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b = openAt(t, dir)
	defer b.Close()
	info, err := b.Exchange.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxAge != 0 {
		t.Fatalf("EXCHANGE MaxAge %s after a start; want none", info.Config.MaxAge)
	}
}
