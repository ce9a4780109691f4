package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
)

// TestReadableID: the id relay prints names the nodes as routing.yaml
// does; anything that is not a message id is left as it is.
func TestReadableID(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"P/=D0=A6=D0=9E/=D0=9E=D0=9F/5/abc", "P/ЦО/ОП/5/abc"},
		{"=D0=9C/SRC/DST/5/abc/retry-12", "М/SRC/DST/5/abc/retry-12"},
		{"P/SRC/DST/5/abc", "P/SRC/DST/5/abc"},
		{"P/=2F/DST/5/abc", "P///DST/5/abc"},
		{"P/=ZZ/DST/5/abc", "P/=ZZ/DST/5/abc"},
		{"P/=D0/DST", "P/=D0/DST"},
		{"", ""},
	} {
		if got := ReadableID(tc.id); got != tc.want {
			t.Errorf("ReadableID(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
}

// TestPushOutcome: Push says what became of a message, so that relay send
// tells it: queued; the same file again is stored before, not queued
// again (relay send said "stored as" for it, found walking through the
// quick start); an older number than the addressee has is dropped, with
// the number it has. Trace finds the message by the id relay prints
// (nodes as routing.yaml names them) as by its NATS form.
func TestPushOutcome(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	busy := &scriptedDelivery{fail: func(uint64, int) error { return errors.New("busy") }}
	p := runPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  ЦО: { deliver: { dir: ./a } }
  ОП: { deliver: { dir: ./b } }
`, b, scriptedEndpoints{"ЦО": &scriptedDelivery{}, "ОП": busy})
	for deadline := time.Now().Add(15 * time.Second); !p.Ready() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	push := func(no uint64) Outcome {
		t.Helper()
		out, err := p.Push(ctx, pickedUp("ЦО", "ОП", no, "<message/>"))
		if err != nil {
			t.Fatalf("push No %d: %v", no, err)
		}
		return out
	}
	if out := push(5); out.Result != OutcomeQueued {
		t.Errorf("first push of No 5: %+v, want queued", out)
	}
	if out := push(5); out.Result != OutcomeStoredBefore || out.Detail == "" {
		t.Errorf("second push of No 5: %+v, want stored_before with a reason", out)
	}
	if _, err := p.States().Update(ctx, "P", "ЦО", "ОП", func(c *Channel) { c.DeliveredNo = 7 }); err != nil {
		t.Fatal(err)
	}
	if out := push(6); out.Result != OutcomeDropped || out.Detail != "ОП already has No 7 (stale)" {
		t.Errorf("push of No 6 after No 7 was delivered: %+v, want dropped: ОП already has No 7 (stale)", out)
	}

	m := pickedUp("ЦО", "ОП", 5, "<message/>")
	h, err := exchange.HeaderOf(m)
	if err != nil {
		t.Fatal(err)
	}
	id := MessageID(h, m.Metadata.Get(exchange.MetaSHA256))
	if shown := ReadableID(id); !strings.HasPrefix(shown, "P/ЦО/ОП/5/") {
		t.Fatalf("readable id %q of %q", shown, id)
	}
	for _, q := range []string{id, ReadableID(id)} {
		var evs []Event
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			var err error
			if evs, err = p.Trace(ctx, TraceQuery{Match: q}); err != nil {
				t.Fatal(err)
			}
			if slices.ContainsFunc(evs, func(e Event) bool { return e.Step == StepPickedUp }) {
				break
			}
		}
		if !slices.ContainsFunc(evs, func(e Event) bool { return e.Step == StepPickedUp && e.MsgID == id }) {
			t.Errorf("trace %q: %d steps, want No 5's picked_up", q, len(evs))
		}
	}
}
