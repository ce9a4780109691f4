package pipeline

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
)

// TestFetchDeadLetterRecordedInChannel: a record fetched from another relay
// whose payload is gone there becomes a dead letter here, and the channel
// records it like one that died at delivery. Nothing was recorded: the next
// number was held as "gap: holding No 3 until No 2 arrives" (No 2 did
// arrive: it is a dead letter), and status showed dead 0 (found by review).
func TestFetchDeadLetterRecordedInChannel(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hb, ob, _ := officeAndHub(ctx, t, log)
	cfg := twoRelays(t, "office1", "sequential")

	putRecord(t, hb, exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: 1}, "<one/>", true)
	putRecord(t, hb, exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: 2}, "<two/>", false)
	putRecord(t, hb, exchange.Header{ExchangePlan: "P", From: "HQ1", To: "OFF", MessageNo: 3}, "<three/>", true)

	off := &scriptedDelivery{}
	p, err := New(cfg, ob, scriptedEndpoints{"OFF": off}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
	fetchedAll(ctx, t, hb, "OFF")

	var c Channel
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err = p.States().Get(ctx, "P", "HQ1", "OFF"); err != nil {
			t.Fatal(err)
		}
		if c.DeliveredNo == 1 && c.LastError != "" {
			break
		}
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 || !strings.Contains(ls[0].Reason, "is gone from relay hq") {
		t.Fatalf("dead letters %+v, %v: want No 2's", ls, err)
	}
	t.Logf("delivered %v; channel: delivered No %d, dead %d, dead No %d, last error %q", off.delivered(), c.DeliveredNo, c.Dead, c.DeadNo, c.LastError)
	if c.Dead != 1 || c.DeadNo != 2 || !strings.Contains(c.LastError, "No 2 is a dead letter") {
		t.Fatalf("No 2 is a dead letter here, but the channel counts dead %d (want 1), dead No %d (want 2), and says %q", c.Dead, c.DeadNo, c.LastError)
	}
}
