package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
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
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 3, 2 }); err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
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
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.PickedNo, c.Queued = 3, 3 }); err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
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
}
