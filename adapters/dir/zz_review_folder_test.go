package dir

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/folder/foldertest"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// TestZZCommitFailureNotTakenAgainAtOnce: README ("If the commit itself
// fails ... the file is left (under its relay-commit- name when the rename
// worked ...) and looked at again with the capped backoff (1 s … 5 min),
// not taken again at once"). The backoff is set on the candidate of the old
// name, which is gone; the relay-commit- file is a new candidate and is
// taken again at once (a duplicate stored per failed commit).
func TestZZCommitFailureNotTakenAgainAtOnce(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "done"), nil, 0o644); err != nil {
		t.Fatal(err) // move:done cannot make its folder: every commit fails
	}
	_, ch := startPickup(t, "A", fastPickup(dir), "move:done", nil)
	if _, err := exchangetest.WriteFile(dir, hdr(1), 500, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	m := foldertest.Next(ch, 3*time.Second)
	if m == nil {
		t.Fatal("not taken")
	}
	m.Ack()
	if again := foldertest.Next(ch, 600*time.Millisecond); again != nil {
		again.Ack()
		t.Fatalf("after a failed commit the file was taken again (as %s) at once, not after the 1 s backoff the README promises", again.Metadata.Get(exchange.MetaSource))
	}
}

// TestZZMoveIntoPickupFolderLoops: `after: move:.` (or the pickup folder's
// own path) is accepted by config; each commit moves relay-commit-X back to
// X in the pickup folder, which is then taken again: the same file is
// stored over and over.
func TestZZMoveIntoPickupFolderLoops(t *testing.T) {
	dir := t.TempDir()
	_, ch := startPickup(t, "A", fastPickup(dir), "move:.", nil)
	if _, err := exchangetest.WriteFile(dir, hdr(1), 500, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	n := 0
	deadline := time.After(1500 * time.Millisecond)
loop:
	for {
		select {
		case m := <-ch:
			m.Ack()
			n++
		case <-deadline:
			break loop
		}
	}
	if n > 1 {
		t.Fatalf("move:. took one file %d times in 1.5 s (moved back under its name, taken again)", n)
	}
}

// TestZZKeepAfterFailedMoveStallsChannel: the whole story on a local
// folder. Run 1, after: move:done with done unusable: the commit renames
// the file to relay-commit-<name> and the move fails; the file stays
// there. The operator switches to after: keep (run 2): the held file is
// taken once more and remembered. Run 3 (any restart): 1C's next message
// Message_A_B.xml is never taken, and relay status shows nothing.
func TestZZKeepAfterFailedMoveStallsChannel(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "done"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(after string, mem folder.KeepMemory) (*folder.Pickup, <-chan *message.Message, func()) {
		a, err := config.ParseAfter(after)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewSubscriber("A", fastPickup(dir), a, mem, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := s.Subscribe(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		return s, ch, func() { s.Close() }
	}
	if _, err := exchangetest.WriteFile(dir, hdr(1), 500, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	_, ch, stop := run("move:done", nil)
	m := foldertest.Next(ch, 3*time.Second)
	if m == nil {
		t.Fatal("run 1: not taken")
	}
	m.Ack()
	held := filepath.Join(dir, folder.HeldName("Message_A_B.xml"))
	for deadline := time.Now().Add(3 * time.Second); !exists(held); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("setup: no held file after the failed move")
		}
	}
	stop()
	mem := foldertest.NewMemory(nil)
	_, ch, stop = run("keep", mem)
	if m = foldertest.Next(ch, 3*time.Second); m == nil {
		t.Fatal("run 2: held file not taken")
	}
	m.Ack()
	time.Sleep(300 * time.Millisecond) // remembered
	stop()
	p, ch, stop := run("keep", mem)
	defer stop()
	if _, err := exchangetest.WriteFile(dir, hdr(2), 500, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	if m = foldertest.Next(ch, 3*time.Second); m == nil {
		msg, _ := p.LastError()
		t.Fatalf("run 3 (after: keep, after a restart): 1C's next message No 2 never taken in 3 s; it waits for %s, which keep remembers as taken; relay status shows %q", filepath.Base(held), msg)
	}
	m.Ack()
}
