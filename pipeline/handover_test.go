package pipeline

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

// The head office took in messages for an office node; the office fetched
// them while the head office relay itself was not running (a restart, an
// upgrade: its NATS cluster kept serving the office). When the head office
// relay starts, its sweep (daemon.sweep: bus.PurgeDone at start) and the
// handover watch start side by side. The records had waited for the office
// over a day (its link was down — README: "an office may be unreachable for
// days"), so PurgeDone removes them as done before the handover has counted
// them — and the handover then never counts them: relay status at the head
// office shows them pending for good, and never "handed to relay office1".
//
// The test runs the sweep's purge first (PurgeDone with the age already
// reached) and then the head office pipeline.
func TestHandoverCountsRecordsPurgedBeforeItLooked(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hb, ob, officeCfg := officeAndHub(ctx, t, log)

	// Taken in at the head office for OFF (served by office1), as its
	// ingest would have counted them.
	const n = 3
	for no := uint64(1); no <= n; no++ {
		queueRecord(t, hb, "HQ1", "OFF", no)
	}
	hqStates := NewStates(hb.Channels)
	if _, err := hqStates.Update(ctx, "P", "HQ1", "OFF", func(c *Channel) { c.Queued, c.PickedNo = n, n }); err != nil {
		t.Fatal(err)
	}

	// The office fetches them while the head office relay is down.
	op, err := New(officeCfg, ob, scriptedEndpoints{"OFF": &scriptedDelivery{}}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, op)
	fetchedAll(ctx, t, hb, "OFF")

	// The head office relay starts: its sweep purges the done records once
	// the handover has counted them (daemon.sweep waits for
	// HandoversCounted).
	hp, err := New(twoRelays(t, "hq", ""), hb, scriptedEndpoints{"HQ1": &scriptedDelivery{}}, log, Options{AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, hp)
	select {
	case <-hp.HandoversCounted():
	case <-ctx.Done():
		t.Fatal("the handover never counted")
	}
	if err := hb.PurgeDone(ctx, 0); err != nil {
		t.Fatal(err)
	}

	var c Channel
	for deadline := time.Now().Add(3 * handoverEvery); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err = hp.States().Get(ctx, "P", "HQ1", "OFF"); err == nil && c.Pending() == 0 {
			break
		}
	}
	if c.Pending() != 0 || c.HandedNo != n {
		t.Fatalf("head office status of P: HQ1 → OFF after office1 fetched all %d: pending %d, handed_no %d (want pending 0, handed up to No %d)", n, c.Pending(), c.HandedNo, n)
	}
}
