package pipeline

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	dto "github.com/prometheus/client_model/go"

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

// srcToSequentialFolder is a relay delivering with the real dir adapter
// to SRC and to DST, a sequential node.
const srcToSequentialFolder = `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { deliver: { dir: ./src } }
  DST: { mode: sequential, deliver: { dir: ./dst } }
`

// pickedUpXML is pickedUp with a real message of size body bytes, whose
// ReceivedNo is received.
func pickedUpXML(t *testing.T, from, to string, no, received uint64, size int64) *message.Message {
	t.Helper()
	var buf bytes.Buffer
	if err := exchangetest.WriteXML(&buf, exchange.Header{ExchangePlan: "P", From: from, To: to, MessageNo: no, ReceivedNo: received}, size); err != nil {
		t.Fatal(err)
	}
	m := pickedUp(from, to, no, buf.String())
	m.Metadata.Set(exchange.MetaReceivedNo, strconv.FormatUint(received, 10))
	return m
}

// fileNo is the MessageNo of the message file at path, 0 if none reads.
func fileNo(path string) uint64 {
	f, err := os.Open(path)
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

// channelUntil waits up to 20 s for the channel P: from → to to be ok.
func channelUntil(t *testing.T, p *Pipeline, from, to, what string, ok func(Channel) bool) Channel {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := p.States().Get(context.Background(), "P", from, to)
		if err != nil {
			t.Fatal(err)
		}
		if ok(c) {
			return c
		}
		if time.Now().After(end) {
			t.Fatalf("%s: %s → %s is %+v", what, from, to, c)
		}
	}
}

// sendThree runs a relay for yaml (SRC and DST delivered into folders)
// with SRC's No 1, 2 and 3 to DST queued, and returns it with the path of
// DST's file of the channel.
func sendThree(t *testing.T, yaml string) (*Pipeline, string) {
	t.Helper()
	root := t.TempDir()
	p := newPipeline(t, yaml, testBus(t), folderEndpoints{root: root})
	ingest := p.ingestHandler("SRC", "test", p.pushLane)
	for no := uint64(1); no <= 3; no++ {
		if err := ingest(pickedUpXML(t, "SRC", "DST", no, 0, 100)); err != nil {
			t.Fatal(err)
		}
	}
	runUntilEnd(t, p)
	return p, filepath.Join(root, "DST", "Message_SRC_DST.xml")
}

// TestSequentialFolderKeepsUnread: a sequential node's folder holds one
// file per channel, and its 1C never removes what it read. No 2 waits
// while the folder holds No 1 unacknowledged; the node's message back
// with ReceivedNo 1 lets it go; No 3 waits for No 2 until the file is
// removed. Relay wrote each number over the one before as soon as that
// was delivered: a node that read less often than numbers came lost the
// increments between (found walking through the quick start).
func TestSequentialFolderKeepsUnread(t *testing.T) {
	p, inbox := sendThree(t, srcToSequentialFolder)
	// heldOn waits for the channel to say No no waits for have, then
	// checks for a while that the folder keeps have.
	heldOn := func(no, have uint64) {
		t.Helper()
		want := "waiting: holding No " + strconv.FormatUint(no, 10) + " until DST reads No " + strconv.FormatUint(have, 10) + ": dir DST: Message_SRC_DST.xml still holds it, unacknowledged"
		c := channelUntil(t, p, "SRC", "DST", "No "+strconv.FormatUint(no, 10)+" held", func(c Channel) bool { return strings.HasPrefix(c.LastError, want) })
		if !c.WaitsForRead() || c.HeldOnGap() {
			t.Fatalf("the hold reads as a failure or a gap: %q", c.LastError)
		}
		time.Sleep(2500 * time.Millisecond) // more than two looks at it
		if got := fileNo(inbox); got != have {
			t.Fatalf("No %d written over No %d, which DST had not acknowledged: the folder has No %d", no, have, got)
		}
	}
	heldOn(2, 1)
	// The message's trace says it once (found walking through the quick
	// start: a held message showed nothing there).
	var held []Event
	for end := time.Now().Add(10 * time.Second); len(held) == 0 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		evs, err := p.Trace(context.Background(), TraceQuery{Node: "DST"})
		if err != nil {
			t.Fatal(err)
		}
		held = slices.DeleteFunc(evs, func(e Event) bool { return e.Step != StepHeld })
	}
	if len(held) != 1 || held[0].No != 2 || !strings.HasPrefix(held[0].Detail, "holding No 2 until DST reads No 1") {
		t.Fatalf("held steps %+v: want one, for No 2", held)
	}

	// DST's 1C read No 1 and says so in its next message to SRC.
	if err := p.ingestHandler("DST", "test", p.pushLane)(pickedUpXML(t, "DST", "SRC", 1, 1, 100)); err != nil {
		t.Fatal(err)
	}
	channelUntil(t, p, "SRC", "DST", "No 2 delivered once No 1 was acknowledged", func(Channel) bool { return fileNo(inbox) == 2 })
	heldOn(3, 2)

	// Someone took No 2 out of the folder (a script that archives read
	// files): nothing is left to lose.
	if err := os.Remove(inbox); err != nil {
		t.Fatal(err)
	}
	channelUntil(t, p, "SRC", "DST", "No 3 delivered once No 2 was removed, the channel at No 3 with no error", func(c Channel) bool {
		return fileNo(inbox) == 3 && c.DeliveredNo == 3 && c.LastError == ""
	})
	if ls, err := p.Dead().List(context.Background()); err != nil || len(ls) != 0 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	// Three deliveries tried, however often the held ones were looked at
	// (found by review: every look counted as an attempt).
	var mv dto.Metric
	if err := p.metrics.attempts.WithLabelValues("DST", p.adapterOf("DST", "deliver")).Write(&mv); err != nil {
		t.Fatal(err)
	}
	if n := mv.GetCounter().GetValue(); n != 3 {
		t.Fatalf("delivery attempts of DST: %v, want 3", n)
	}
}

// TestAckInDroppedReplyCounts: the node's message back whose own number
// relay delivered before (the node restored from a copy, its file found
// again) is dropped at pickup, but its ReceivedNo still acknowledges: No 2
// waited for DST to read No 1, which DST had said it did (found by
// review).
func TestAckInDroppedReplyCounts(t *testing.T) {
	b := testBus(t)
	root := t.TempDir()
	p := newPipeline(t, srcToSequentialFolder, b, folderEndpoints{root: root})
	fromSRC, fromDST := p.ingestHandler("SRC", "test", p.pushLane), p.ingestHandler("DST", "test", p.pushLane)
	for no := uint64(1); no <= 2; no++ {
		if err := fromSRC(pickedUpXML(t, "SRC", "DST", no, 0, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fromDST(pickedUpXML(t, "DST", "SRC", 5, 0, 100)); err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, p)
	channelUntil(t, p, "DST", "SRC", "DST → SRC No 5 delivered", func(c Channel) bool { return c.DeliveredNo == 5 })
	channelUntil(t, p, "SRC", "DST", "No 2 held", func(c Channel) bool { return c.WaitsForRead() })
	// DST read No 1; its message back carries No 5 again (another content).
	if err := fromDST(pickedUpXML(t, "DST", "SRC", 5, 1, 120)); err != nil {
		t.Fatal(err)
	}
	inbox := filepath.Join(root, "DST", "Message_SRC_DST.xml")
	channelUntil(t, p, "SRC", "DST", "No 1 acknowledged and No 2 delivered", func(c Channel) bool {
		return c.AckedNo == 1 && fileNo(inbox) == 2
	})
}

// TestOverwriteUnreadWritesOver: a sequential node with overwrite_unread
// (its files taken away as they land, or acknowledged outside relay) gets
// each number over the one before, unacknowledged, in order.
func TestOverwriteUnreadWritesOver(t *testing.T) {
	p, inbox := sendThree(t, strings.Replace(srcToSequentialFolder, "mode: sequential,", "mode: sequential, overwrite_unread: true,", 1))
	c := channelUntil(t, p, "SRC", "DST", "No 3 delivered unacknowledged", func(c Channel) bool { return c.DeliveredNo == 3 && fileNo(inbox) == 3 })
	if c.AckedNo != 0 || c.Superseded != 0 || c.LastError != "" {
		t.Fatalf("channel %+v", c)
	}
}

// TestHeldToldOncePerMessage: two numbers of a channel held for the same
// unread file (before the channel's first delivery: the folder holds No 5
// from before relay, and No 7 was picked up before No 6, as mails arrive
// out of order) each say "held" once; they said it at every look (found
// by review).
func TestHeldToldOncePerMessage(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "DST"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := exchangetest.WriteFile(filepath.Join(root, "DST"), exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 5}, 100, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	p := newPipeline(t, srcToSequentialFolder, testBus(t), folderEndpoints{root: root})
	fromSRC := p.ingestHandler("SRC", "test", p.pushLane)
	for _, no := range []uint64{7, 6} {
		if err := fromSRC(pickedUpXML(t, "SRC", "DST", no, 0, 100)); err != nil {
			t.Fatal(err)
		}
	}
	runUntilEnd(t, p)
	channelUntil(t, p, "SRC", "DST", "held", func(c Channel) bool { return c.WaitsForRead() })
	time.Sleep(6 * time.Second) // several looks at each
	evs, err := p.Trace(context.Background(), TraceQuery{Node: "DST"})
	if err != nil {
		t.Fatal(err)
	}
	held := slices.DeleteFunc(evs, func(e Event) bool { return e.Step != StepHeld })
	if len(held) > 2 {
		t.Fatalf("%d held steps in 6 s for two held messages (want one each): first %+v, last %+v", len(held), held[0], held[len(held)-1])
	}
}
