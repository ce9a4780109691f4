package bus

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/config"
)

// --- helpers -------------------------------------------------------------

// openListening opens an embedded bus that also listens on 127.0.0.1 (a
// random port), so a test can connect through a tapped TCP connection.
func openListening(t *testing.T) *Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{Listen: "127.0.0.1:-1"}, DataDir: t.TempDir(), ID: "faults"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// tapConn is a client connection whose outbound writes a test sees first
// (onWrite may run code before the bytes leave, and ask that what comes
// back be held for a while: a slow NATS).
type tapConn struct {
	net.Conn
	mu      sync.Mutex
	onWrite func(p []byte) (hold time.Duration)
	until   atomic.Int64
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	f := c.onWrite
	c.mu.Unlock()
	if f != nil {
		if d := f(p); d > 0 {
			c.until.Store(time.Now().Add(d).UnixNano())
		}
	}
	return c.Conn.Write(p)
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if u := c.until.Load(); u > 0 {
		time.Sleep(time.Until(time.Unix(0, u)))
	}
	return n, err
}

type tapDialer struct{ c *tapConn }

func (d *tapDialer) Dial(network, address string) (net.Conn, error) {
	nc, err := net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	d.c.Conn = nc
	return d.c, nil
}

// tapped is the exchange layout bound to a connection of its own whose
// writes go through tap (as a Lane is).
func tapped(t *testing.T, b *Bus, tap *tapConn) *Bus {
	t.Helper()
	nc, err := nats.Connect(b.server.ClientURL(), nats.SetCustomDialer(&tapDialer{tap}), nats.Name("tapped"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l := &Bus{Conn: nc, log: b.log}
	if l.JS, err = newJetStream(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if what, err := l.bindExchange(ctx); err != nil {
		t.Fatal(what, err)
	}
	return l
}

// readWhole says whether the payload name reads back as data.
func readWhole(b *Bus, name string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := b.OpenPayload(ctx, name)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return errors.New("payload differs")
	}
	return nil
}

// --- findings ------------------------------------------------------------

// TestPayloadMetaAckLostKeepsChunks: a large put whose wait for
// the meta's answer ends (the relay stops: ctx cancelled; or NATS answers
// after putAckWait) returns an error, and its deferred cleanup purges the
// chunks, but the meta it published is stored all the same: the store
// then holds a meta over no chunks, which HasPayload reports as "stored
// whole" (ingest then keeps it and queues a record whose payload is gone).
func TestPayloadMetaAckLostKeepsChunks(t *testing.T) {
	b := openListening(t)
	data := patterned(3*maxChunk+11, 7)
	const name = "P/A/B/5/meta-ack-lost"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	trigger := "HPUB " + metaSubject(name) + " "
	tap := &tapConn{onWrite: func(p []byte) time.Duration {
		if bytes.Contains(p, []byte(trigger)) {
			cancel() // the relay is stopping just as the meta goes out
			return 300 * time.Millisecond
		}
		return 0
	}}
	l := tapped(t, b, tap)
	_, _, err := l.PutPayload(ctx, name, int64(len(data)), bytes.NewReader(data))
	if err == nil {
		t.Skip("the put got its meta's answer first; nothing to show")
	}
	t.Logf("put: %v", err)
	time.Sleep(500 * time.Millisecond)
	bg := context.Background()
	has, herr := b.HasPayload(bg, name, int64(len(data)), hexSum(data))
	rerr := readWhole(b, name, data)
	if has && rerr != nil {
		t.Fatalf("after a failed put, HasPayload says the payload is stored whole (%v), but it reads: %v", herr, rerr)
	}
}

// TestPayloadSweepSparesLiveChunks: a large put whose
// marker removal gets no answer (NATS slow for 5 s right after the meta is
// stored) reports success but leaves its partial marker, which names the
// chunks of the payload it just stored. SweepPartial later takes the marker
// for a crash's leftovers and purges those chunks: the payload of a record
// still waiting for its office is gone, its meta still there.
func TestPayloadSweepSparesLiveChunks(t *testing.T) {
	b := openListening(t)
	data := patterned(3*maxChunk+11, 11)
	const name = "P/A/B/6/marker-left"
	metaOut := "HPUB " + metaSubject(name) + " "
	marker := metaSubject(partialName(name))
	var sawMeta atomic.Bool
	var held atomic.Bool
	tap := &tapConn{onWrite: func(p []byte) time.Duration {
		if bytes.Contains(p, []byte(metaOut)) {
			sawMeta.Store(true)
			return 0
		}
		if sawMeta.Load() && bytes.Contains(p, []byte(marker)) && held.CompareAndSwap(false, true) {
			return 6 * time.Second // the marker lookup gets no answer within the API timeout
		}
		return 0
	}}
	l := tapped(t, b, tap)
	n, sum, err := l.PutPayload(context.Background(), name, int64(len(data)), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if n != int64(len(data)) || sum != hexSum(data) {
		t.Fatalf("put stored %d, %s", n, sum)
	}
	if !held.Load() {
		t.Fatal("the test did not slow the marker removal")
	}
	if err := readWhole(b, name, data); err != nil {
		t.Fatalf("right after the put: %v", err)
	}
	// A day later (olderThan 0 stands for "older than partialAge").
	removed, err := b.SweepPartial(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	has, _ := b.HasPayload(context.Background(), name, int64(len(data)), hexSum(data))
	if err := readWhole(b, name, data); err != nil {
		t.Fatalf("a put that reported success: after SweepPartial (removed %d), HasPayload %v, read: %v", removed, has, err)
	}
}

// TestPayloadTakeoverAfterOwnershipCheck: a second put of the same name
// (the pickup lease moved) that starts after the first put checked it still
// owns the marker, but before its meta is stored, purges the first put's
// chunks. If the second put then fails (its file is gone: the first relay
// committed it), the first put has reported success over chunks that no
// longer exist.
func TestPayloadTakeoverAfterOwnershipCheck(t *testing.T) {
	b := openListening(t)
	data := patterned(3*maxChunk+11, 17)
	const name = "P/A/B/7/takeover"
	metaOut := "HPUB " + metaSubject(name) + " "
	var once sync.Once
	var secondErr error
	tap := &tapConn{onWrite: func(p []byte) time.Duration {
		if bytes.Contains(p, []byte(metaOut)) {
			once.Do(func() {
				// The other replica's put of the same file, which fails
				// after its first chunks.
				r := io.MultiReader(bytes.NewReader(data[:2*maxChunk]), iotest.ErrReader(errors.New("file gone")))
				_, _, secondErr = b.PutPayload(context.Background(), name, int64(len(data)), r)
			})
		}
		return 0
	}}
	l := tapped(t, b, tap)
	_, _, err := l.PutPayload(context.Background(), name, int64(len(data)), bytes.NewReader(data))
	t.Logf("second put: %v", secondErr)
	if err != nil {
		t.Skipf("first put gave way: %v", err)
	}
	has, _ := b.HasPayload(context.Background(), name, int64(len(data)), hexSum(data))
	if rerr := readWhole(b, name, data); rerr != nil {
		t.Fatalf("first put reported success; HasPayload %v; read: %v", has, rerr)
	}
}

// TestPayloadUnexpectedEOFIsNotEnd: a reader that fails with
// io.ErrUnexpectedEOF (a truncated HTTP body, base64 MIME part, flate
// stream) is taken for the end of the payload: the put reports success
// with the bytes read so far. With size -1 (dead letters) nothing catches it.
func TestPayloadUnexpectedEOFIsNotEnd(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	data := patterned(5*maxChunk+3, 3)
	for _, c := range []struct {
		name string
		cut  int
	}{{"dead/small-truncated", 1000}, {"dead/large-truncated", 3*maxChunk + 5}} {
		r := io.MultiReader(bytes.NewReader(data[:c.cut]), iotest.ErrReader(io.ErrUnexpectedEOF))
		n, _, err := b.PutPayload(ctx, c.name, -1, r)
		if err == nil {
			t.Errorf("%s: a reader that failed with %v after %d bytes: put succeeded, stored %d bytes", c.name, io.ErrUnexpectedEOF, c.cut, n)
		}
	}
}

// TestPayloadSmallPutRefusedChunkNoMeta: the one-chunk put publishes the meta
// without waiting for the chunk. When the chunk is refused (the store is at
// its byte limit; an operator's quota on the bucket, which leaderReads keeps)
// the put returns an error, but the meta it sent is stored: HasPayload says
// the payload is whole and a read finds no chunk.
func TestPayloadSmallPutRefusedChunkNoMeta(t *testing.T) {
	b := openEmbedded(t)
	ctx := context.Background()
	cfg := b.payloadStream.CachedInfo().Config
	cfg.MaxBytes = 4096
	cfg.Discard = jetstream.DiscardNew
	if _, err := b.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b2 := openAgain(t, b)
	data := patterned(100_000, 5)
	const name = "P/A/B/8/quota"
	_, _, err := b2.PutPayload(ctx, name, int64(len(data)), bytes.NewReader(data))
	if err == nil {
		t.Fatal("put over the quota succeeded")
	}
	t.Logf("put: %v", err)
	time.Sleep(300 * time.Millisecond) // the meta sent with the chunk lands
	has, _ := b2.HasPayload(ctx, name, int64(len(data)), hexSum(data))
	if rerr := readWhole(b2, name, data); has && rerr != nil {
		t.Fatalf("after a refused put, HasPayload says stored whole; read: %v", rerr)
	}
}

// openAgain binds the layout afresh on b's connection (handles made before
// a stream update keep the old config).
func openAgain(t *testing.T, b *Bus) *Bus {
	t.Helper()
	l := &Bus{Conn: b.Conn, JS: b.JS, log: b.log}
	if what, err := l.bindExchange(context.Background()); err != nil {
		t.Fatal(what, err)
	}
	return l
}

// TestPayloadSweepSparesProgressingPut: SweepPartial's "unfinished" is the
// age of the marker written when the put began, never refreshed: a put that
// keeps storing chunks steadily but has run longer than olderThan is taken
// for a crash's leftovers; its chunks so far are purged, and it fails at the
// end with "another put of it took over", which never happened. (With
// partialAge = 24 h: a 2 GB message at ~20 KB/s from an office link.)
func TestPayloadSweepSparesProgressingPut(t *testing.T) {
	b := openEmbedded(t)
	b.markEvery = 200 * time.Millisecond // as a day's sweep is to markRefresh
	data := patterned(12*maxChunk, 19)
	const name = "P/A/B/9/slow"
	// One chunk every 100 ms: never idle for more than 100 ms.
	r := &slowReader{r: bytes.NewReader(data), every: 100 * time.Millisecond}
	done := make(chan error, 1)
	go func() {
		_, _, err := b.PutPayload(context.Background(), name, int64(len(data)), r)
		done <- err
	}()
	time.Sleep(700 * time.Millisecond)
	// The sweep's olderThan (500 ms here) is 5× the longest pause of the put.
	n, err := b.SweepPartial(context.Background(), 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("a put that never paused longer than 100 ms: swept (%d) as unfinished, then: %v", n, err)
	}
}

type slowReader struct {
	r     io.Reader
	every time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.every)
	if len(p) > maxChunk {
		p = p[:maxChunk]
	}
	return s.r.Read(p)
}

// TestPayloadSmallPutReadErrorNamesPayload: a read failure in the one-chunk
// path comes back bare ("disk gone"), naming neither the payload nor what
// failed; the chunked path says "payload X: read: ...".
func TestPayloadSmallPutReadErrorNamesPayload(t *testing.T) {
	b := openEmbedded(t)
	r := io.MultiReader(bytes.NewReader([]byte("<v8msg:Message")), iotest.ErrReader(errors.New("disk gone")))
	_, _, err := b.PutPayload(context.Background(), "P/A/B/10/small-read", 5000, r)
	if err == nil || !strings.Contains(err.Error(), "P/A/B/10/small-read") {
		t.Fatalf("small put from a failing reader: %q, want the payload named", err)
	}
}
