package pipeline

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// srcToSequentialDST is a relay delivering to SRC and to DST, a sequential
// node.
const srcToSequentialDST = `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`

// TestGapHoldKeepsPredecessorFailure: on a sequential channel the number
// queued behind one whose delivery fails (the destination is down) is held,
// and the channel keeps showing the destination's error. The hold wrote
// "gap: holding No 6 until No 5 arrives" over it about once a second (No 5's
// error came back only at its retries, up to 5 min apart): status and the
// gap alert told the operator No 5 never arrived (found by review).
func TestGapHoldKeepsPredecessorFailure(t *testing.T) {
	t.Parallel()
	b := testBus(t)
	d := &scriptedDelivery{fail: func(no uint64, _ int) error {
		if no == 5 {
			return errors.New("ftp dst: connection refused")
		}
		return nil
	}}
	p := newPipeline(t, srcToSequentialDST, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": d})
	ctx := context.Background()
	if _, err := p.States().Update(ctx, "P", "SRC", "DST", func(c *Channel) {
		c.PickedNo, c.DeliveredNo, c.Queued, c.Resolved = 6, 4, 6, 4
	}); err != nil {
		t.Fatal(err)
	}
	queueRecord(t, b, "SRC", "DST", 5)
	queueRecord(t, b, "SRC", "DST", 6)
	runUntilEnd(t, p)

	time.Sleep(4 * time.Second)
	var samples, misleading int
	var last string
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		c, err := p.States().Get(ctx, "P", "SRC", "DST")
		if err != nil {
			t.Fatal(err)
		}
		samples++
		if strings.Contains(c.LastError, "until No 5 arrives") {
			misleading++
			last = c.LastError
		}
	}
	if misleading > 0 {
		t.Fatalf("No 5 is queued and failing (connection refused), yet in %d of %d samples the channel's last error said %q", misleading, samples, last)
	}
}
