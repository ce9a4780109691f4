package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/bus"
)

// TestTraceOfRetriedIDShowsDelivery: `relay dead retry N` prints "queued
// as <id>", the id an operator traces next. After the retried message is
// delivered, its trace shows the retry and the delivery. The retried
// record is named <id>/retry-N and Trace matched ids exactly: the trace
// ended at "dead" for good (found by review).
func TestTraceOfRetriedIDShowsDelivery(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := diesFirst(1)
	queueRecord(t, b, "SRC", "DST", 1)
	p := runSequential(t, b, d)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.Dead == 1 }); c.Dead != 1 {
		t.Fatalf("state %+v: want No 1 dead", c)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	id, err := p.Retry(ctx, ls[0].Seq)
	if err != nil {
		t.Fatal(err)
	}
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 }); c.DeliveredNo != 1 {
		t.Fatalf("state %+v: retried No 1 not delivered", c)
	}
	time.Sleep(300 * time.Millisecond) // events are published without waiting
	evs, err := p.Trace(ctx, TraceQuery{Match: id})
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, e := range evs {
		steps = append(steps, e.Step+"("+e.MsgID+")")
	}
	if !slices.ContainsFunc(evs, func(e Event) bool { return e.Step == StepRetried && e.MsgID == id }) ||
		!slices.ContainsFunc(evs, func(e Event) bool { return e.Step == StepDelivered }) {
		t.Fatalf("retry said queued as %q; its trace after delivery is %v: want a retried and a delivered step", id, steps)
	}
}

// TestTraceSingleEvent: a trace on an events stream holding exactly one
// event (a fresh relay after its first pickup) finds it. The read loop ran
// only while seq < LastSeq, starting at FirstSeq == LastSeq (found by
// review).
func TestTraceSingleEvent(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	p := newPipeline(t, retryYAML, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	recordEvent(b.Conn, p.log, Event{Step: StepPickedUp, MsgID: "P/SRC/DST/1/abc", File: "Message_SRC_DST.xml", Node: "SRC"})
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if info, err := b.Events.Info(ctx); err == nil && info.State.Msgs == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info, _ := b.Events.Info(ctx); info == nil || info.State.Msgs != 1 {
		t.Fatalf("events stream: %+v", info)
	}
	evs, err := p.Trace(ctx, TraceQuery{Match: "P/SRC/DST/1/abc"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("trace of the only recorded event: %d events, want 1", len(evs))
	}
}

// TestReadEventsWholeOrError: a trace reads every stored event, across
// the iterator's batches, and one that cannot reach the last event it
// knows is stored fails instead of answering with a part. The read
// fetched batches through an ordered consumer and stopped quietly at the
// first batch that came back empty or with an error ("no responders" from
// a cluster server that restarted a moment ago): the trace then lacked
// its newest steps and said nothing.
func TestReadEventsWholeOrError(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	const n = 1300 // more than one pull batch
	for i := range n {
		recordEvent(b.Conn, slog.New(slog.DiscardHandler), Event{Step: StepPickedUp, MsgID: fmt.Sprintf("P/SRC/DST/%d/abc", i+1)})
	}
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for range 100 {
		if info, err := b.Events.Info(ctx); err == nil && info.State.Msgs == n {
			last = info.State.LastSeq
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if last == 0 {
		t.Fatalf("events stream did not reach %d events", n)
	}
	var got int
	if err := readEvents(ctx, b.Events, 1, last, func(Event) { got++ }); err != nil || got != n {
		t.Fatalf("read %d of %d events, err %v", got, n, err)
	}
	// One more than is stored: the read waits for it, then fails.
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	got = 0
	err := readEvents(short, b.Events, 1, last+1, func(Event) { got++ })
	if err == nil {
		t.Fatalf("a read short of the last event answered with %d events and no error", got)
	}
}

// TestRetriedStepNamesReadableID: the retried step says what the retry
// was queued as in the id's readable form, as `relay dead retry` prints
// it and `relay trace` takes it. It gave the NATS form, the Cyrillic
// codes as =D0=A6=D0=9E (found walking through the quick start).
func TestRetriedStepNamesReadableID(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	d := diesFirst(1)
	queueRecord(t, b, "ЦО", "ОП", 1)
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  ЦО: { deliver: { dir: ./co } }
  ОП: { deliver: { dir: ./op } }
`, b, scriptedEndpoints{"ЦО": &scriptedDelivery{}, "ОП": d})
	var ls []DeadLetter
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && len(ls) == 0; time.Sleep(50 * time.Millisecond) {
		ls, _ = p.Dead().List(ctx)
	}
	if len(ls) != 1 {
		t.Fatalf("dead letters %+v: want No 1's", ls)
	}
	id, err := p.Retry(ctx, ls[0].Seq)
	if err != nil {
		t.Fatal(err)
	}
	var detail string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && detail == ""; time.Sleep(50 * time.Millisecond) {
		evs, err := p.Trace(ctx, TraceQuery{Match: id})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Step == StepRetried {
				detail = e.Detail
			}
		}
	}
	if want := ReadableID(id) + retrySuffix; !strings.Contains(detail, want) || strings.Contains(detail, "=D0") {
		t.Fatalf("retried step %q: want the readable id %s…", detail, want)
	}
}

// TestReadEventsBoundedWhenJetStreamFails: a read whose consumer must be
// made anew while JetStream does not make it (here the stream is deleted
// under it) fails within a few seconds. The client's ordered consumer
// tried to make it for ever, deaf to the read's context: the trace (and
// the dashboard's request for it) never returned (found by review).
func TestReadEventsBoundedWhenJetStreamFails(t *testing.T) {
	b := testBus(t)
	for i := range 3 {
		recordEvent(b.Conn, slog.New(slog.DiscardHandler), Event{Step: StepPickedUp, MsgID: fmt.Sprintf("id%d", i)})
	}
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		// Past what is stored: the read waits in the iterator.
		done <- readEvents(ctx, b.Events, 1, 10, func(Event) {})
	}()
	time.Sleep(500 * time.Millisecond)
	if err := b.JS.DeleteStream(context.Background(), bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a read of a deleted stream answered without an error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the read still runs 30 s after its stream was deleted (its context ended after 2 s)")
	}
}
