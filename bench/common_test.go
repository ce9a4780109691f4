package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testTracker is a throughput tracker on a fresh dir site for a workload
// of 2 channels (N01→N02, N02→N01) with 3 messages each, and deliver, which
// puts data into c's inbox the way both sides do (temp file, rename) and
// gives the tracker a moment to read it. deliver does not report its
// writes (tracker.writing): the tracker has only what it reads.
func testTracker(t *testing.T) (*workload, *tracker, func(c *channel, data []byte)) {
	t.Helper()
	w, err := newWorkload(6, 2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	root, err := tempSite(t.TempDir(), "tracker-", w.nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTemp(root) })
	s := dirSite(root)
	ctx, cancel := context.WithCancel(context.Background())
	tr, err := startTracker(ctx, s, w)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.close(); cancel() })
	deliver := func(c *channel, data []byte) {
		tmp := filepath.Join(root, s.in(c), ".test.part")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, s.inPath(c)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // the tracker reads it (fsnotify Create)
	}
	return w, tr, deliver
}

// corrupted is data with one digit of its body changed: same header, same
// size, still well-formed, another sha256.
func corrupted(t *testing.T, data []byte) []byte {
	t.Helper()
	out := bytes.Replace(data, []byte("<v8:Code>00000001<"), []byte("<v8:Code>00000009<"), 1)
	if bytes.Equal(out, data) {
		t.Fatal("corrupted: pattern not found")
	}
	return out
}

// wantErr fails t unless err is an error that says want.
func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("no error; want one saying %q", want)
	case !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not say %q", err, want)
	default:
		t.Logf("reported as it should: %v", err)
	}
}

// TestTrackerCatchesCorruptFirstVersion: a corrupt version of an
// intermediate message that the tracker reads first fails the run.
func TestTrackerCatchesCorruptFirstVersion(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		deliver(c, corrupted(t, c.msgs[0].data))
		deliver(c, c.msgs[1].data)
		deliver(c, c.msgs[2].data)
	}
	wantErr(t, tr.wait(context.Background(), 5*time.Second, nil, nil), "No 1 has sha256")
}

// TestTrackerMissingMessages: sequential channels where No 1 and No 2
// never reached the inbox and nothing reported them written. The final
// numbers alone do not make a complete run.
func TestTrackerMissingMessages(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		deliver(c, c.msgs[len(c.msgs)-1].data) // only the final one
	}
	wantErr(t, tr.wait(context.Background(), 5*time.Second, nil, nil), "1 of 3 messages seen")
	_, err := tr.verify()
	wantErr(t, err, "No 1, 2 neither seen in nor reported written")
}

// TestTrackerSameNumberRewrittenCorrupt: No 1 arrives intact, then a
// second, corrupt copy of No 1 replaces it in the inbox (what a duplicate
// delivery with bad bytes would look like to the 1C node). Every version
// read is hashed, a number read before included.
func TestTrackerSameNumberRewrittenCorrupt(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		deliver(c, c.msgs[0].data)
		deliver(c, corrupted(t, c.msgs[0].data))
		deliver(c, c.msgs[1].data)
		deliver(c, c.msgs[2].data)
	}
	wantErr(t, tr.wait(context.Background(), 5*time.Second, nil, nil), "No 1 has sha256")
}

// TestTrackerOlderOverNewer: on each channel No 2 is delivered, then No 1
// overwrites it (an older message never overwrites a newer one: an inbox
// never goes back), then No 3.
func TestTrackerOlderOverNewer(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		deliver(c, c.msgs[1].data)
		deliver(c, c.msgs[0].data) // older over newer
		deliver(c, c.msgs[2].data)
	}
	wantErr(t, tr.wait(context.Background(), 5*time.Second, nil, nil), "went back from No 2 to No 1")
}

// TestTrackerSkippedNumbersReported: the numbers the tracker did not read
// (overwritten before it could, as in latest mode or on a fast writer) are
// accounted for by the writer's reports, which verify checks after the
// clock; a skip alone is no error once every number is accounted for.
func TestTrackerSkippedNumbersReported(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		for _, m := range c.msgs {
			tr.writing(tr.site.inPath(c), m.data)
		}
		deliver(c, c.msgs[2].data) // the tracker sees only No 3
	}
	if err := tr.wait(context.Background(), 5*time.Second, nil, nil); err != nil {
		t.Fatalf("complete run failed: %v", err)
	}
	written, err := tr.verify()
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if written != w.messages {
		t.Errorf("verify counted %d messages written, want %d", written, w.messages)
	}
}

// TestTrackerReportedWritesChecked: writes reported by the side's writer
// are checked against what was sent: a corrupt one, or a number reported
// twice in place of another, fails verify.
func TestTrackerReportedWritesChecked(t *testing.T) {
	t.Run("corrupt", func(t *testing.T) {
		w, tr, deliver := testTracker(t)
		for _, c := range w.channels {
			tr.writing(tr.site.inPath(c), corrupted(t, c.msgs[0].data))
			tr.writing(tr.site.inPath(c), c.msgs[1].data)
			tr.writing(tr.site.inPath(c), c.msgs[2].data)
			deliver(c, c.msgs[2].data)
		}
		if err := tr.wait(context.Background(), 5*time.Second, nil, nil); err != nil {
			t.Fatalf("wait: %v", err) // three writes reported: verify looks closer
		}
		_, err := tr.verify()
		wantErr(t, err, "write 1: No 1 with the wrong sha256")
	})
	t.Run("twice", func(t *testing.T) {
		w, tr, deliver := testTracker(t)
		for _, c := range w.channels {
			tr.writing(tr.site.inPath(c), c.msgs[1].data)
			tr.writing(tr.site.inPath(c), c.msgs[1].data)
			tr.writing(tr.site.inPath(c), c.msgs[2].data)
			deliver(c, c.msgs[2].data)
		}
		if err := tr.wait(context.Background(), 5*time.Second, nil, nil); err != nil {
			t.Fatalf("wait: %v", err)
		}
		written, err := tr.verify()
		wantErr(t, err, "No 1 neither seen in nor reported written")
		if written != 4 {
			t.Errorf("verify counted %d messages written, want 4 (No 2 and 3 of each channel)", written)
		}
	})
}

// TestTrackerInboxRegressesAfterDone: every channel's final message
// arrives, the tracker declares the run done, then an older message
// replaces the final one. The tracker goes on reading after the clock, and
// verify re-reads every inbox.
func TestTrackerInboxRegressesAfterDone(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		for _, m := range c.msgs {
			deliver(c, m.data)
		}
	}
	if err := tr.wait(context.Background(), 5*time.Second, nil, nil); err != nil {
		t.Fatalf("clean run failed: %v", err)
	}
	if _, err := tr.verify(); err != nil {
		t.Fatalf("verify of a clean run: %v", err)
	}
	c := w.channels[0]
	deliver(c, c.msgs[0].data) // the inbox now holds No 1 again
	if p := tr.problems(); len(p) == 0 {
		t.Errorf("inbox of %s→%s went back to No 1 after the clock; problems() is empty", c.from, c.to)
	}
	_, err := tr.verify()
	wantErr(t, err, "holds No 1, not the final No 3")
}

// TestTrackerVerifyRereadsInboxes: with the watcher closed (nothing read
// after the clock), verify alone finds an inbox that lost its final
// message.
func TestTrackerVerifyRereadsInboxes(t *testing.T) {
	w, tr, deliver := testTracker(t)
	for _, c := range w.channels {
		for _, m := range c.msgs {
			deliver(c, m.data)
		}
	}
	if err := tr.wait(context.Background(), 5*time.Second, nil, nil); err != nil {
		t.Fatalf("clean run failed: %v", err)
	}
	tr.close()
	c := w.channels[1]
	if err := os.WriteFile(tr.site.inPath(c), corrupted(t, c.msgs[2].data), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := tr.verify()
	wantErr(t, err, "No 3 has sha256")
}
