package pipeline

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/dir"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// smallDirEndpoints is a real dir pickup of node SRC with limits lim, and
// scripted deliveries.
type smallDirEndpoints struct {
	path string
	lim  exchange.Limits
}

func (e smallDirEndpoints) Pickup(node string, ep *config.Endpoint, mem *Memory, log *slog.Logger) (message.Subscriber, error) {
	if node != "SRC" {
		return nil, nil
	}
	return dir.NewSubscriber(node, dir.PickupConfig{
		Path: e.path, Settle: config.Duration(10 * time.Millisecond), PollInterval: config.Duration(100 * time.Millisecond),
		Limits: e.lim,
	}, ep.After, mem, nil, log)
}

func (e smallDirEndpoints) Deliver(string, *config.Endpoint, *slog.Logger) (message.Publisher, error) {
	return &scriptedDelivery{}, nil
}

// TestTooLargeFileDeadLetteredOnceAcrossRestarts: README: a file over the
// size limit "becomes a dead letter ... and the file stays where it is; it
// is looked at again once it changes". Each restart made the same,
// unchanged file one more dead letter (found by review): the pickup
// memory remembers it now.
func TestTooLargeFileDeadLetteredOnceAcrossRestarts(t *testing.T) {
	b := testBus(t)
	out := t.TempDir()
	var doc bytes.Buffer
	if err := exchangetest.WriteXML(&doc, exchange.Header{ExchangePlan: "P", From: "SRC", To: "DST", MessageNo: 1}, 500); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(out, "Message_SRC_DST.xml")
	if err := os.WriteFile(file, doc.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	_ = os.Chtimes(file, old, old)
	lim := exchange.DefaultLimits()
	lim.MaxSize = 100
	yaml := `relay: { id: r1, listen: "127.0.0.1:1" }
nodes:
  SRC: { pickup: { dir: ./src/out }, deliver: { dir: ./src/in } }
  DST: { deliver: { dir: ./dst/in } }
`
	cfg := testConfig(t, yaml)
	run := func() (stop func()) {
		p, err := New(cfg, b, smallDirEndpoints{path: out, lim: lim}, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{AckWait: 5 * time.Second, Limits: lim})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		return func() { cancel(); <-done; p.close() }
	}
	count := func() int {
		p, err := New(cfg, b, smallDirEndpoints{path: out, lim: lim}, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{AckWait: 5 * time.Second, Limits: lim})
		if err != nil {
			t.Fatal(err)
		}
		defer p.close()
		ls, err := p.Dead().List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(ls)
	}
	stop := run()
	deadline := time.Now().Add(15 * time.Second)
	for count() == 0 {
		if time.Now().After(deadline) {
			stop()
			t.Fatal("no dead letter for the too-large file")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	if n := count(); n != 1 {
		t.Fatalf("before restart: %d dead letters, want 1", n)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("file not left in place: %v", err)
	}
	// Restart: a new pipeline and pickup over the same folder and store.
	stop = run()
	time.Sleep(2 * time.Second)
	stop()
	if n := count(); n != 1 {
		t.Fatalf("after a restart the same unchanged too-large file has %d dead letters, want 1", n)
	}
}
