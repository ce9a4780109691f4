package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
)

// TestSkipGoesOnPastAGap: No 2 of a sequential channel never comes (1C
// wrote No 3 over it before relay took it). No 3 is held, and the hold
// names the command that goes on without No 2; relay skip lets No 3 go.
// Before, the only way on was a message of No 2 made by hand.
func TestSkipGoesOnPastAGap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	queueRecord(t, b, "SRC", "DST", 1)
	queueRecord(t, b, "SRC", "DST", 3)
	p := runSequentialTaken(t, b, d, 3, 2)
	// (No 3 may first wait for No 1, queued before it.)
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 && strings.Contains(c.LastError, "until No 2 arrives") })
	if want := "gap: holding No 3 until No 2 arrives; if it never will, `relay skip P SRC DST 2` goes on without it"; c.LastError != want {
		t.Fatalf("held: %q, want %q", c.LastError, want)
	}
	// Refused where there is nothing to skip.
	for _, bad := range []struct {
		to string
		no uint64
	}{{"SRC", 2}, {"DST", 1}, {"DST", 3}, {"DST", 0}} {
		from := "SRC"
		if bad.to == "SRC" {
			from = "DST"
		}
		if _, err := p.SkipThrough(ctx, "P", from, bad.to, bad.no); !errors.Is(err, ErrCannotSkip) {
			t.Errorf("skip %s → %s through No %d: %v, want refused", from, bad.to, bad.no, err)
		}
	}
	after, err := p.SkipThrough(ctx, "P", "SRC", "DST", 2)
	if err != nil {
		t.Fatal(err)
	}
	if after.DroppedNo != 2 || after.HeldOnGap() {
		t.Fatalf("after the skip: %+v", after)
	}
	c = waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 3 })
	if c.DeliveredNo != 3 || c.LastError != "" || !slices.Equal(d.delivered(), []uint64{1, 3}) {
		t.Fatalf("after the skip: delivered %v, state %+v: want No 3 delivered", d.delivered(), c)
	}
	if _, err := p.SkipThrough(ctx, "P", "SRC", "DST", 2); !errors.Is(err, ErrCannotSkip) {
		t.Errorf("a second skip of No 2: %v, want refused (past it already)", err)
	}
}

// TestSkipRefusedBehindDeadLetter: a number that died at delivery holds
// the ones after it; a skip over it would leave its letter to be retried
// behind newer numbers. The skip says to retry or drop it instead.
func TestSkipRefusedBehindDeadLetter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := diesFirst(2)
	for no := uint64(1); no <= 3; no++ {
		queueRecord(t, b, "SRC", "DST", no)
	}
	p := runSequentialTaken(t, b, d, 3, 3)
	if c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeadNo == 2 && c.DeliveredNo == 1 }); c.DeadNo != 2 {
		t.Fatalf("state %+v: want No 2 dead", c)
	}
	_, err := p.SkipThrough(ctx, "P", "SRC", "DST", 2)
	if !errors.Is(err, ErrCannotSkip) || !strings.Contains(err.Error(), "No 2 is a dead letter") {
		t.Fatalf("skip over a dead letter: %v, want refused naming it", err)
	}
}

// TestShellArg: the hold's command pastes into a shell as it is.
func TestShellArg(t *testing.T) {
	for in, want := range map[string]string{
		"Магазины": "Магазины",
		"ЦО":       "ЦО",
		"A B":      "'A B'",
		"it's":     `'it'\''s'`,
		"":         "''",
		"$HOME":    "'$HOME'",
	} {
		if got := shellArg(in); got != want {
			t.Errorf("shellArg(%q) = %s, want %s", in, got, want)
		}
	}
	// A code starting with '-' would be read as a flag (found by review).
	for h, want := range map[exchange.Header]string{
		{ExchangePlan: "Магазины", From: "ЦО", To: "ОП"}: "relay skip Магазины ЦО ОП 6",
		{ExchangePlan: "P", From: "-1", To: "ОП"}:        "relay skip -- P -1 ОП 6",
	} {
		if got := skipCommand(h, 6); got != want {
			t.Errorf("skipCommand(%+v) = %s, want %s", h, got, want)
		}
	}
}

// skipOverQueued: No 2 of a sequential channel is queued and failing
// (the destination refuses it for now), No 3 will never come, No 4 is
// held. A skip through No 3 is refused: No 2 waits for its delivery. The
// skip let No 4 go, and No 2's retry was dropped as stale behind it:
// lost (found by review). No 2, then No 4, are delivered once the
// destination takes them.
func skipOverQueued(t *testing.T, delivered uint64) {
	ctx := context.Background()
	b := testBus(t)
	var skipped atomic.Int64 // unix nanos of the skip; 0 before
	d := &scriptedDelivery{fail: func(no uint64, _ int) error {
		// No 2 fails until 3 s after the skip: the destination recovers
		// later than the held No 4 looks again.
		if s := skipped.Load(); no == 2 && (s == 0 || time.Since(time.Unix(0, s)) < 3*time.Second) {
			return errors.New("dst: 503 busy")
		}
		return nil
	}}
	if delivered > 0 {
		queueRecord(t, b, "SRC", "DST", 1)
	}
	queueRecord(t, b, "SRC", "DST", 2)
	queueRecord(t, b, "SRC", "DST", 4)
	p := runSequentialTaken(t, b, d, 4, 2+delivered)
	waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == delivered && c.LastError != "" })
	time.Sleep(2 * time.Second) // No 2 failed, No 4 held behind it
	if got := d.delivered(); slices.Contains(got, 4) {
		t.Fatalf("before the skip: delivered %v", got)
	}
	_, err := p.SkipThrough(ctx, "P", "SRC", "DST", 3)
	skipped.Store(time.Now().UnixNano())
	if !errors.Is(err, ErrCannotSkip) || !strings.Contains(err.Error(), "No 2 is queued") {
		t.Fatalf("skip through No 3 with No 2 queued: %v, want refused naming No 2", err)
	}
	// No 2 goes once the destination takes it; then No 3 is the gap, and
	// the skip lets No 4 go.
	waitChannel(t, p, "P", 20*time.Second, func(c Channel) bool { return c.DeliveredNo == 2 })
	if _, err := p.SkipThrough(ctx, "P", "SRC", "DST", 3); err != nil {
		t.Fatalf("skip through No 3 once No 2 was delivered: %v", err)
	}
	c := waitChannel(t, p, "P", 40*time.Second, func(c Channel) bool { return c.DeliveredNo == 4 })
	want := []uint64{2, 4}
	if delivered > 0 {
		want = []uint64{1, 2, 4}
	}
	if got := d.delivered(); !slices.Equal(got, want) {
		t.Fatalf("No 2 queued and failing, the skip refused, then given again once No 2 went: delivered %v, want %v (state: delivered %d, dropped %d, stale %d)",
			got, want, c.DeliveredNo, c.DroppedNo, c.Stale)
	}
}

// TestSkipRefusedOverQueuedNumber: delivered up to No 1.
func TestSkipRefusedOverQueuedNumber(t *testing.T) {
	t.Parallel()
	skipOverQueued(t, 1)
}

// TestSkipRefusedOverQueuedBeforeFirstDelivery: nothing delivered yet
// (passedNo 0); No 4 waits for No 2, queued before it.
func TestSkipRefusedOverQueuedBeforeFirstDelivery(t *testing.T) {
	t.Parallel()
	skipOverQueued(t, 0)
}

// TestSkipRefusedOnNodeOfAnotherRelay: DST is served by relay r2; this
// relay (r1) only picked its messages up and handed them on. A skip here
// wrote a state no delivery reads, and said it was done (found by review).
func TestSkipRefusedOnNodeOfAnotherRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { relay: r2, mode: sequential, deliver: { dir: ./dst } }
`, b, scriptedEndpoints{"SRC": &scriptedDelivery{}})
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) {
		c.PickedNo, c.Queued, c.Resolved, c.HandedNo, c.HandedTo = 7, 7, 7, 7, "r2"
	}); err != nil {
		t.Fatal(err)
	}
	c, err := p.SkipThrough(ctx, "P", "SRC", "DST", 6)
	if !errors.Is(err, ErrCannotSkip) {
		t.Fatalf("skip on a channel relay r2 delivers: err %v, state %+v; want refused (the skip does nothing here)", err, c)
	}
}

// TestGapHoldNamesTheWholeRun: a relay down while 1C wrote over its file
// three times leaves No 2, 3 and 4 missing. The hold named one number,
// so each took a skip of its own, each shown only at the next look
// (found by review). It names the run up to the lowest number queued,
// and one skip goes on past all of it.
func TestGapHoldNamesTheWholeRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := testBus(t)
	d := &scriptedDelivery{}
	for _, no := range []uint64{1, 5, 7} {
		queueRecord(t, b, "SRC", "DST", no)
	}
	p := runSequentialTaken(t, b, d, 7, 3)
	// No 5 and No 7 are both held, each telling its own number.
	want := " until No 2 arrives (No 2 to No 4 are missing); if they never will, `relay skip P SRC DST 4` goes on without them"
	c := waitChannel(t, p, "P", 15*time.Second, func(c Channel) bool { return c.DeliveredNo == 1 && strings.HasSuffix(c.LastError, want) })
	if !strings.HasSuffix(c.LastError, want) {
		t.Fatalf("held: %q, want the run No 2 to No 4 named", c.LastError)
	}
	if _, err := p.SkipThrough(ctx, "P", "SRC", "DST", 4); err != nil {
		t.Fatal(err)
	}
	c = waitChannel(t, p, "P", 40*time.Second, func(c Channel) bool { return c.DeliveredNo == 5 && strings.Contains(c.LastError, "until No 6 arrives") })
	if want := "gap: holding No 7 until No 6 arrives; if it never will, `relay skip P SRC DST 6` goes on without it"; c.LastError != want || !slices.Equal(d.delivered(), []uint64{1, 5}) {
		t.Fatalf("after the skip: delivered %v, held %q, want No 5 delivered and %q", d.delivered(), c.LastError, want)
	}
}

// TestGapHoldWords: what a message held on a gap says, by what is queued.
func TestGapHoldWords(t *testing.T) {
	h := exchange.Header{ExchangePlan: "P", From: "A", To: "B", MessageNo: 7}
	for _, c := range []struct {
		passed, lowest uint64
		want           string
	}{
		{5, 0, "gap: holding No 7 until No 6 arrives; if it never will, `relay skip P A B 6` goes on without it"},
		{2, 0, "gap: holding No 7 until No 3 arrives (No 3 to No 6 are missing); if they never will, `relay skip P A B 6` goes on without them"},
		{2, 5, "gap: holding No 7 until No 3 arrives (No 3 to No 4 are missing); if they never will, `relay skip P A B 4` goes on without them"},
		{2, 4, "gap: holding No 7 until No 3 arrives; if it never will, `relay skip P A B 3` goes on without it"},
		{2, 3, "gap: holding No 7 until No 3, queued, is delivered"},
	} {
		if got := gapHold(h, c.passed, c.lowest); got != c.want {
			t.Errorf("passed %d, lowest queued %d: %q, want %q", c.passed, c.lowest, got, c.want)
		}
	}
}
