package pipeline

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/dir"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// folderEndpoints delivers every node into root/<node> with the real dir
// adapter; no pickups (the test hands messages to ingest).
type folderEndpoints struct{ root string }

func (e folderEndpoints) Pickup(string, *config.Endpoint, *Memory, *slog.Logger) (message.Subscriber, error) {
	return nil, nil
}

func (e folderEndpoints) Deliver(node string, _ *config.Endpoint, log *slog.Logger) (message.Publisher, error) {
	return dir.NewPublisher(node, dir.DeliverConfig{Path: filepath.Join(e.root, node)}, nil, log)
}

// TestSequentialFolderKeepsUnread: a sequential node's folder holds one
// file per channel, and its 1C never removes what it read. No 2 waits
// while the folder holds No 1 unacknowledged; the node's message back
// with ReceivedNo 1 lets it go; No 3 waits for No 2 until the file is
// removed. Relay wrote each number over the one before as soon as that
// was delivered: a node that read less often than numbers came lost the
// increments between (found walking through the quick start).
func TestSequentialFolderKeepsUnread(t *testing.T) {
	b := testBus(t)
	root := t.TempDir()
	p := newPipeline(t, `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`, b, folderEndpoints{root: root})
	ingest := p.ingestHandler("SRC", "test", p.pushLane)
	message := func(from, to string, no, received uint64) *message.Message {
		var buf bytes.Buffer
		if err := exchangetest.WriteXML(&buf, exchange.Header{ExchangePlan: "P", From: from, To: to, MessageNo: no, ReceivedNo: received}, 100); err != nil {
			t.Fatal(err)
		}
		m := pickedUp(from, to, no, buf.String())
		m.Metadata.Set(exchange.MetaReceivedNo, strconv.FormatUint(received, 10))
		return m
	}
	for no := uint64(1); no <= 3; no++ {
		if err := ingest(message("SRC", "DST", no, 0)); err != nil {
			t.Fatal(err)
		}
	}
	runUntilEnd(t, p)

	ctx := context.Background()
	inbox := filepath.Join(root, "DST", "Message_SRC_DST.xml")
	has := func() uint64 {
		f, err := os.Open(inbox)
		if err != nil {
			return 0
		}
		defer f.Close()
		h, err := exchange.ReadHeader(f, exchange.DefaultLimits())
		if err != nil {
			return 0
		}
		return h.MessageNo
	}
	state := func() Channel {
		c, err := p.States().Get(ctx, "P", "SRC", "DST")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	waitUntil := func(what string, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(20 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: the folder has No %d, the channel %+v", what, has(), state())
			}
		}
	}
	// heldOn waits for the channel to say No no waits for have, then
	// checks for a while that the folder keeps have.
	heldOn := func(no, have uint64) {
		t.Helper()
		want := "waiting: holding No " + strconv.FormatUint(no, 10) + " until DST reads No " + strconv.FormatUint(have, 10) + ": dir DST: Message_SRC_DST.xml still holds it, unacknowledged"
		waitUntil("No "+strconv.FormatUint(no, 10)+" held", func() bool { return strings.HasPrefix(state().LastError, want) })
		c := state()
		if !c.WaitsForRead() || c.HeldOnGap() {
			t.Fatalf("the hold reads as a failure or a gap: %q", c.LastError)
		}
		time.Sleep(2500 * time.Millisecond) // more than two looks at it
		if got := has(); got != have {
			t.Fatalf("No %d written over No %d, which DST had not acknowledged: the folder has No %d", no, have, got)
		}
	}
	heldOn(2, 1)

	// DST's 1C read No 1 and says so in its next message to SRC.
	if err := p.ingestHandler("DST", "test", p.pushLane)(message("DST", "SRC", 1, 1)); err != nil {
		t.Fatal(err)
	}
	waitUntil("No 2 delivered once No 1 was acknowledged", func() bool { return has() == 2 })
	heldOn(3, 2)

	// Someone took No 2 out of the folder (a script that archives read
	// files): nothing is left to lose.
	if err := os.Remove(inbox); err != nil {
		t.Fatal(err)
	}
	waitUntil("No 3 delivered once No 2 was removed", func() bool { return has() == 3 })
	waitUntil("the channel at No 3 with no error", func() bool {
		c := state()
		return c.DeliveredNo == 3 && c.LastError == ""
	})
	if ls, err := p.Dead().List(ctx); err != nil || len(ls) != 0 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
}
