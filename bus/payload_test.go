package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

func openEmbedded(t *testing.T) *Bus {
	t.Helper()
	b := openAt(t, t.TempDir())
	t.Cleanup(b.Close)
	return b
}

// openAt opens an embedded bus on dir, which the caller closes: a test that
// restarts the server opens the same dir again.
func openAt(t *testing.T, dir string) *Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{}, DataDir: dir, ID: "test"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// readAll reads a payload through OpenKnownPayload and, as another relay
// version or `relay dead` would, through the object store itself.
func readBoth(t *testing.T, b *Bus, name string, data []byte) {
	t.Helper()
	ctx := context.Background()
	r, err := b.OpenKnownPayload(ctx, name, int64(len(data)), hexSum(data))
	if err != nil {
		t.Fatalf("OpenKnownPayload %s: %v", name, err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("OpenKnownPayload %s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
	}
	got, err = b.Payloads.GetBytes(ctx, name)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ObjectStore.GetBytes %s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
	}
	info, err := b.Payloads.GetInfo(ctx, name)
	if err != nil || info.Size != uint64(len(data)) {
		t.Fatalf("GetInfo %s: %+v, %v", name, info, err)
	}
}

// subjectMsgs counts the messages the payload stream holds on subj.
func subjectMsgs(t *testing.T, b *Bus, subj string) uint64 {
	t.Helper()
	info, err := b.payloadStream.Info(context.Background(), jetstream.WithSubjectFilter(subj))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subj]
}

func TestPutPayload(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	small := bytes.Repeat([]byte("<v8msg/>"), 1000)
	big := bytes.Repeat([]byte("0123456789abcdef"), 20_000) // 320,000 bytes: three chunks
	many := make([]byte, (2*putWindow+3)*maxChunk+17)       // a short last chunk
	for i := range many {
		many[i] = byte(i*7 + i/maxChunk)
	}

	cases := []struct {
		name string
		data []byte
		size int64 // the size hint
	}{
		{"small", small, int64(len(small))},
		{"small, size unknown", small, -1},
		{"empty", nil, 0},
		{"one chunk exactly", big[:maxChunk], maxChunk},
		{"big", big, int64(len(big))},
		{"more chunks than the window", many, int64(len(many))},
		{"more chunks than the window, size unknown", many, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, sum, err := b.PutPayload(ctx, c.name, c.size, bytes.NewReader(c.data))
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(c.data)) || sum != hexSum(c.data) {
				t.Fatalf("stored %d bytes, sha256 %s; want %d, %s", n, sum, len(c.data), hexSum(c.data))
			}
			readBoth(t, b, c.name, c.data)
			if err := b.DeletePayload(ctx, c.name); err != nil {
				t.Fatal(err)
			}
			if _, err := b.OpenKnownPayload(ctx, c.name, int64(len(c.data)), hexSum(c.data)); len(c.data) > 0 && !errors.Is(err, jetstream.ErrObjectNotFound) {
				t.Fatalf("after delete: %v, want not found", err)
			}
		})
	}

	t.Run("put twice: one chunk, one delete", func(t *testing.T) {
		for range 2 {
			if _, _, err := b.PutPayload(ctx, "twice", int64(len(small)), bytes.NewReader(small)); err != nil {
				t.Fatal(err)
			}
		}
		readBoth(t, b, "twice", small)
		subj := chunkSubject(payloadNUID("twice"))
		if n := subjectMsgs(t, b, subj); n != 1 {
			t.Fatalf("%d chunks on %s, want 1", n, subj)
		}
		if err := b.DeletePayload(ctx, "twice"); err != nil {
			t.Fatal(err)
		}
		if n := subjectMsgs(t, b, subj); n != 0 {
			t.Fatalf("%d chunks left on %s after delete", n, subj)
		}
	})

	t.Run("stored by ObjectStore.Put", func(t *testing.T) {
		// A payload another relay version (or the fetch) stored: the
		// reader finds no chunk on the derived subject and looks it up.
		if _, err := b.Payloads.Put(ctx, jetstream.ObjectMeta{Name: "by put"}, bytes.NewReader(small)); err != nil {
			t.Fatal(err)
		}
		readBoth(t, b, "by put", small)
	})

	t.Run("stored by ObjectStore.Put, deleted", func(t *testing.T) {
		if err := b.DeletePayload(ctx, "by put"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Payloads.GetInfo(ctx, "by put", jetstream.GetObjectInfoShowDeleted()); !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Fatalf("after delete: %v, want not found", err)
		}
	})

	t.Run("a large payload put again replaces its chunks", func(t *testing.T) {
		if _, _, err := b.PutPayload(ctx, "again", int64(len(many)), bytes.NewReader(many)); err != nil {
			t.Fatal(err)
		}
		first, err := b.Payloads.GetInfo(ctx, "again")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.PutPayload(ctx, "again", int64(len(many)), bytes.NewReader(many)); err != nil {
			t.Fatal(err)
		}
		second, err := b.Payloads.GetInfo(ctx, "again")
		if err != nil {
			t.Fatal(err)
		}
		readBoth(t, b, "again", many)
		if n := subjectMsgs(t, b, chunkSubject(first.NUID)); n != 0 {
			t.Fatalf("%d chunks of the replaced payload left", n)
		}
		if n := subjectMsgs(t, b, chunkSubject(second.NUID)); n != uint64(second.Chunks) || n != uint64(len(many)/maxChunk+1) {
			t.Fatalf("%d chunks stored, meta says %d", n, second.Chunks)
		}
		if err := b.DeletePayload(ctx, "again"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a large payload whose reader fails leaves nothing", func(t *testing.T) {
		r := io.MultiReader(bytes.NewReader(many[:3*putWindow*maxChunk/2]), iotest.ErrReader(errors.New("disk gone")))
		_, _, err := b.PutPayload(ctx, "broken", int64(len(many)), r)
		if err == nil || !strings.Contains(err.Error(), "disk gone") || !strings.Contains(err.Error(), "broken") {
			t.Fatalf("put from a failing reader: %v", err)
		}
		if _, err := b.Payloads.GetInfo(ctx, "broken"); !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Fatalf("after a failed put: %v, want not found", err)
		}
	})

	t.Run("a delete marker ObjectStore.Delete left is purged", func(t *testing.T) {
		if _, _, err := b.PutPayload(ctx, "marked", int64(len(small)), bytes.NewReader(small)); err != nil {
			t.Fatal(err)
		}
		if err := b.Payloads.Delete(ctx, "marked"); err != nil {
			t.Fatal(err)
		}
		if err := b.DeletePayload(ctx, "marked"); err != nil {
			t.Fatal(err)
		}
	})

	// Everything put above was deleted: nothing may be left behind, not
	// even the delete markers ObjectStore.Delete leaves, one per message for
	// good in a bucket without a max age.
	info, err := b.payloadStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("%d messages left in the payload store after every payload was deleted", info.State.Msgs)
	}

	t.Run("a record's bad size or sha256 falls back to the lookup", func(t *testing.T) {
		if _, _, err := b.PutPayload(ctx, "hint", int64(len(small)), bytes.NewReader(small)); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			size int64
			sha  string
		}{{-1, hexSum(small)}, {int64(len(small)), "not hex"}, {int64(len(small)), "abcd"}, {maxChunk + 1, hexSum(small)}} {
			r, err := b.OpenKnownPayload(ctx, "hint", c.size, c.sha)
			if err != nil {
				t.Fatalf("size %d, sha256 %q: %v", c.size, c.sha, err)
			}
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, small) {
				t.Fatalf("size %d, sha256 %q: %d bytes, %v", c.size, c.sha, len(got), err)
			}
		}
	})

	t.Run("wrong sha256 is refused", func(t *testing.T) {
		if _, _, err := b.PutPayload(ctx, "sum", int64(len(small)), bytes.NewReader(small)); err != nil {
			t.Fatal(err)
		}
		r, err := b.OpenKnownPayload(ctx, "sum", int64(len(small)), hexSum([]byte("other")))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(r); err == nil || !strings.Contains(err.Error(), "digest") {
			t.Fatalf("read with the wrong sha256: %v, want a digest error", err)
		}
	})

	t.Run("a failed put says which payload", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, _, err := b.PutPayload(cctx, "cancelled", int64(len(small)), bytes.NewReader(small))
		if err == nil || !strings.Contains(err.Error(), "cancelled") {
			t.Fatalf("put with a cancelled context: %v", err)
		}
	})
}

// patterned is n bytes that repeat only every 256 × k, so a chunk in the
// wrong place shows.
func patterned(n, k int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * k)
	}
	return data
}

// onlyPayload fails unless the payload store holds exactly name's chunks
// and its meta: nothing a put left behind.
func onlyPayload(t *testing.T, b *Bus, name string) {
	t.Helper()
	ctx := context.Background()
	meta, err := b.Payloads.GetInfo(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.payloadStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(meta.Chunks) + 1; info.State.Msgs != want {
		t.Fatalf("%d messages in the store, want %d (the payload's chunks and its meta): a put left something behind", info.State.Msgs, want)
	}
}

// cutReader hands out r and, after n bytes, calls cut once.
type cutReader struct {
	r   io.Reader
	n   int64
	cut func()
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 && c.cut != nil {
		c.cut()
		c.cut = nil
	}
	if int64(len(p)) > c.n && c.n > 0 {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

// TestPutCutShort: a large put whose connection dies half-way (as in a
// crash: nothing can be purged) leaves chunks behind; the next put of the
// same name, after a restart, removes them, so the store holds exactly the
// payload's chunks and its meta.
func TestPutCutShort(t *testing.T) {
	dir := t.TempDir()
	data := patterned(3*putWindow*maxChunk+5, 13)
	ctx := context.Background()

	b := openAt(t, dir)
	r := &cutReader{r: bytes.NewReader(data), n: int64(2 * putWindow * maxChunk), cut: func() { b.Conn.Close() }}
	if _, _, err := b.PutPayload(ctx, "cut", int64(len(data)), r); err == nil {
		t.Fatal("a put over a closed connection succeeded")
	}
	b.Close()

	b = openAt(t, dir)
	defer b.Close()
	info, err := b.payloadStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs < putWindow {
		t.Fatalf("%d messages in the store after the cut: the test did not leave a partial put behind", info.State.Msgs)
	}
	if _, _, err := b.PutPayload(ctx, "cut", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	readBoth(t, b, "cut", data)
	onlyPayload(t, b, "cut")
}

// TestPutTakenOver: two puts of one payload at once (a pickup lease moved
// while the first was still storing). The second purges the first's chunks
// as a crash's leftovers; the first then gives up instead of writing a meta
// over chunks that are gone, and the payload reads whole, with nothing
// else left in the store.
func TestPutTakenOver(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	data := patterned(3*putWindow*maxChunk+5, 31)
	half := make(chan struct{})
	resume := make(chan struct{})
	r := &cutReader{r: bytes.NewReader(data), n: int64(2 * putWindow * maxChunk), cut: func() { close(half); <-resume }}
	first := make(chan error, 1)
	go func() {
		_, _, err := b.PutPayload(ctx, "twice at once", int64(len(data)), r)
		first <- err
	}()
	<-half
	if _, _, err := b.PutPayload(ctx, "twice at once", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if err := <-first; err == nil || !strings.Contains(err.Error(), "took over") {
		t.Fatalf("the first put: %v, want it to give way", err)
	}
	readBoth(t, b, "twice at once", data)
	onlyPayload(t, b, "twice at once")
}

// TestSweepPartial: the leftovers of a put cut short that no later put
// cleared (its marker and chunks) are removed once old enough; a marker
// younger than that (a put that may still be writing) and whole payloads
// are left alone.
func TestSweepPartial(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*maxChunk/16)
	if _, _, err := b.PutPayload(ctx, "whole", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	count := func() uint64 {
		info, err := b.payloadStream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	whole := count()
	const left = "dead/cut-short"
	if err := b.markPartial(ctx, left, "LEFTNUID"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := b.JS.Publish(ctx, chunkSubject("LEFTNUID"), data[:maxChunk]); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.SweepPartial(ctx, time.Hour); err != nil || n != 0 || count() != whole+3 {
		t.Fatalf("sweep of a young marker: removed %d (%v), %d messages; want it kept", n, err, count())
	}
	if n, err := b.SweepPartial(ctx, 0); err != nil || n != 1 {
		t.Fatalf("sweep: removed %d (%v), want 1", n, err)
	}
	if got := count(); got != whole {
		t.Fatalf("%d messages after the sweep, want the whole payload's %d", got, whole)
	}
	readBoth(t, b, "whole", data)
}

// TestDamagedPayloadIsPermanent: a payload that reads back with another
// digest than its record names (the store damaged) failed every delivery
// attempt, retried every few minutes for ever; it is exchange.ErrDamaged
// and Permanent now, a dead letter (found by review).
func TestDamagedPayloadIsPermanent(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	data := []byte("<v8msg:Message/>")
	if _, _, err := b.PutPayload(ctx, "P/A/B/1/x", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	r, err := b.OpenKnownPayload(ctx, "P/A/B/1/x", int64(len(data)), hexSum([]byte("<v8msg:Other/>!!")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	if !errors.Is(err, exchange.ErrDamaged) || !exchange.IsPermanent(err) {
		t.Fatalf("read of a damaged payload: %v, want ErrDamaged and Permanent", err)
	}
}

// TestPayloadGoneUnderItsReader: chunks deleted while a reader is between
// them (the payload dropped under a delivery) read as a payload gone
// (jetstream.ErrObjectNotFound, a dead letter with nothing to retry), not
// as a failure retried for ever — unless the payload was stored again.
func TestPayloadGoneUnderItsReader(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	data := patterned(3*maxChunk, 7)
	if _, _, err := b.PutPayload(ctx, "P/A/B/2/x", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	r, err := b.OpenPayload(ctx, "P/A/B/2/x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, maxChunk)); err != nil {
		t.Fatal(err)
	}
	if err := b.DeletePayload(ctx, "P/A/B/2/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("read on after the payload's delete: %v, want ErrObjectNotFound", err)
	}

	// Stored again under its name (a re-pickup's ingest) while read: the
	// read fails, not as gone (a dead letter keeping nothing, found by
	// review), and a read from the start gets it whole.
	if _, _, err := b.PutPayload(ctx, "P/A/B/2/x", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if r, err = b.OpenPayload(ctx, "P/A/B/2/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, maxChunk)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.PutPayload(ctx, "P/A/B/2/x", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); err == nil || errors.Is(err, jetstream.ErrObjectNotFound) || exchange.IsPermanent(err) {
		t.Fatalf("read on after the payload was stored again: %v, want a failure to retry", err)
	}
	readBoth(t, b, "P/A/B/2/x", data)
}

// TestPayloadChunksDamaged: chunks that disagree with the record being
// read are ErrDamaged and Permanent, a dead letter: a chunk larger than
// what is left of the stated size; chunks ending before it, or missing
// under the very record (purged under the same NUID) — those are found
// missing by every read from the start as well, and were retried for ever,
// the pull mailbox held at that message (found by review).
func TestPayloadChunksDamaged(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	data := patterned(3*maxChunk, 7)
	if _, _, err := b.PutPayload(ctx, "P/A/B/9/x", int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	info, err := b.Payloads.GetInfo(ctx, "P/A/B/9/x")
	if err != nil {
		t.Fatal(err)
	}
	damaged := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, exchange.ErrDamaged) || !exchange.IsPermanent(err) {
			t.Fatalf("%s: %v, want ErrDamaged and Permanent", what, err)
		}
	}

	for _, tc := range []struct {
		what string
		size int64
	}{
		{"a chunk past the stated size", maxChunk / 2},
		{"chunks end before the stated size", int64(len(data)) + 10},
	} {
		r := &payloadReader{ctx: ctx, s: b.payloadStream, objects: b.Payloads, name: "P/A/B/9/x", subject: chunkSubject(info.NUID), left: tc.size, sum: sha256.New()}
		_, err := io.ReadAll(r)
		damaged(tc.what, err)
	}

	// Chunks purged under their own record, mid-read and then from the start.
	r, err := b.OpenPayload(ctx, "P/A/B/9/x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, maxChunk)); err != nil {
		t.Fatal(err)
	}
	if err := b.payloadStream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubject(info.NUID))); err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	damaged("chunks purged under their record while read", err)
	if r, err = b.OpenPayload(ctx, "P/A/B/9/x"); err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	damaged("chunks purged under their record, read again", err)
}

// racyStream runs hook once, right after a GetMsg that found nothing:
// what another goroutine may do between the reader's GetMsg and its
// GetInfo.
type racyStream struct {
	jetstream.Stream
	hook func()
}

func (s *racyStream) GetMsg(ctx context.Context, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error) {
	m, err := s.Stream.GetMsg(ctx, seq, opts...)
	if errors.Is(err, jetstream.ErrMsgNotFound) && s.hook != nil {
		h := s.hook
		s.hook = nil
		h()
	}
	return m, err
}

// TestPayloadOneChunkStoredAgainWhileRead: a one-chunk payload (nearly
// every message) dropped under its reader and stored again under its name
// keeps its NUID (payloadNUID is derived from the name). A new put landing
// between the reader's GetMsg and its GetInfo made the whole payload read
// as damaged (Permanent: a dead letter; found by review); it is a failure
// to retry, and a read from the start gets it.
func TestPayloadOneChunkStoredAgainWhileRead(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	const name = "P/A/B/7/x"
	data := patterned(1000, 3)
	if _, _, err := b.PutPayload(ctx, name, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	info, err := b.Payloads.GetInfo(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DeletePayload(ctx, name); err != nil {
		t.Fatal(err)
	}
	s := &racyStream{Stream: b.payloadStream, hook: func() {
		if _, _, err := b.PutPayload(ctx, name, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Error(err)
		}
	}}
	sum := sha256.Sum256(data)
	r := &payloadReader{ctx: ctx, s: s, objects: b.Payloads, name: name, subject: chunkSubject(info.NUID),
		want: digestOf(sum[:]), left: int64(len(data)), sum: sha256.New()}
	_, err = io.ReadAll(r)
	if fresh, oerr := b.OpenPayload(ctx, name); oerr == nil {
		got, rerr := io.ReadAll(fresh)
		if rerr != nil || !bytes.Equal(got, data) {
			t.Fatalf("stored again: a read from the start: %v", rerr)
		}
	} else {
		t.Fatal(oerr)
	}
	if errors.Is(err, exchange.ErrDamaged) || exchange.IsPermanent(err) {
		t.Fatalf("payload stored again (whole) while read: %v — Permanent ErrDamaged, a dead letter; want a failure to retry", err)
	}
}
