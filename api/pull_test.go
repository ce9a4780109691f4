package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// oneOffer is an outbox holding one message.
type oneOffer struct{ o pull.Offer }

func (b oneOffer) Next() (pull.Offer, bool) { return b.o, true }
func (b oneOffer) Ack(string) error         { return nil }
func (b oneOffer) Release(string, error)    {}
func (b oneOffer) Touch(string)             {}
func (b oneOffer) Sent(string)              {}

// mobConfig is a routing.yaml whose node MOB pulls its messages with the
// token mob-secret.
func mobConfig(t *testing.T) *config.Config {
	t.Helper()
	// With the newline of a token stored from a file (a Kubernetes Secret
	// made --from-file), which no request could carry: it is trimmed.
	t.Setenv("RELAY_TEST_MOB_TOKEN", "mob-secret\n")
	cfg, err := config.Parse([]byte("nodes:\n  CO:\n    pickup: { dir: a }\n  MOB:\n    api_token_env: RELAY_TEST_MOB_TOKEN\n    deliver: { http_pull: {} }\n"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// pullBackend is fakeBackend with an http_pull mailbox.
type pullBackend struct {
	*fakeBackend
	ob Outbox
}

func (p pullBackend) Outbox(string) Outbox { return p.ob }

// TestPullHeaders: the pulled file comes with the header's plan and
// numbers, and without them when the message was routed by its file name
// (a sealed zip has none to tell; 0 or "" would read as real values).
func TestPullHeaders(t *testing.T) {
	cfg := mobConfig(t)
	sealed, err := exchange.ParseName("Message_CO_MOB.zip")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		h    exchange.Header
		name string
		want map[string]string // "" = absent
	}{
		{"numbered", exchange.Header{Dialect: exchange.DialectPlatform, ExchangePlan: "Shops", From: "CO", To: "MOB", MessageNo: 4, ReceivedNo: 2}, "Message_CO_MOB.xml",
			map[string]string{"X-Relay-Plan": "Shops", "X-Relay-From": "CO", "X-Relay-To": "MOB", "X-Relay-Message-No": "4", "X-Relay-Received-No": "2"}},
		{"by name", sealed.Sealed(), sealed.String(),
			map[string]string{"X-Relay-Plan": "", "X-Relay-From": "CO", "X-Relay-To": "MOB", "X-Relay-Message-No": "", "X-Relay-Received-No": ""}},
	} {
		offer := pull.Offer{ID: "id1", Name: c.name, Header: c.h, Size: 4, SHA256: bodySHA,
			Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("body")), nil }}
		s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, oneOffer{offer}}, "", slog.New(slog.DiscardHandler))
		w := do(s, "GET", "/api/v1/nodes/MOB/messages/next", "127.0.0.1:5000", "Bearer mob-secret")
		if w.Code != 200 || w.Body.String() != "body" {
			t.Fatalf("%s: %d %q", c.what, w.Code, w.Body)
		}
		for k, want := range c.want {
			got, ok := w.Header()[k]
			if want == "" && ok {
				t.Errorf("%s: %s %q, want no such header", c.what, k, got)
			}
			if want != "" && w.Header().Get(k) != want {
				t.Errorf("%s: %s %q, want %q", c.what, k, w.Header().Get(k), want)
			}
		}
	}
}

// bodySHA is the sha256 of "body", the offers' file.
const bodySHA = "230d8358dc8e8890b4c58deeb62912ee2f20357ae92a5cc861b98e68fe31acb5"

// TestPullDamagedFileNeverComplete: a stored file found wrong at its end
// (another sha256, the store's digest check) reaches the node one byte
// short of its Content-Length, never as a complete-looking download, and
// is offered again at once.
func TestPullDamagedFileNeverComplete(t *testing.T) {
	cfg := mobConfig(t)
	offer := pull.Offer{ID: "id1", Name: "Message_CO_MOB.xml", Size: 4, SHA256: bodySHA,
		Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("bodY")), nil }}
	ob := &recordingOutbox{oneOffer: oneOffer{offer}}
	s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, ob}, "", slog.New(slog.DiscardHandler))
	w := do(s, "GET", "/api/v1/nodes/MOB/messages/next", "127.0.0.1:5000", "Bearer mob-secret")
	if w.Body.Len() >= 4 {
		t.Fatalf("the node got %d of 4 bytes of a file whose sha256 is wrong: a complete-looking download", w.Body.Len())
	}
	if n := ob.released.Load(); n != 1 {
		t.Errorf("released %d times, want once (offered again at once)", n)
	}
}

// Go's mux routes HEAD to the GET pattern of .../messages/next. A HEAD (a
// monitoring probe, a proxy's check) is refused: it leased the waiting
// message and read its payload for nothing, and the node's real GET then
// heard 204 "nothing waits" for the whole lease (5 min by default).
func TestPullHeadDoesNotLease(t *testing.T) {
	cfg := mobConfig(t)
	mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(5 * time.Minute)}, nil)
	defer mb.Close()
	body := "<x/>"
	park(mb, mobMsg(watermill.NewUUID(), "CO", 1, body, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil }), 1)
	s := mobServer(cfg, mb)
	if w := do(s, "HEAD", "/api/v1/nodes/MOB/messages/next", "192.0.2.7:5000", "Bearer mob-secret"); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("HEAD: %d, want 405", w.Code)
	}
	w := do(s, "GET", "/api/v1/nodes/MOB/messages/next", "192.0.2.7:5000", "Bearer mob-secret")
	if w.Code != 200 {
		t.Fatalf("GET after a HEAD: %d, want 200 with the waiting message (the HEAD leased it away)", w.Code)
	}
}

// gatedBody is a message body that sends its first byte and then waits
// for release before sending the rest.
type gatedBody struct {
	first   bool
	head    io.Reader
	release chan struct{}
	rest    io.Reader
	closed  *atomic.Bool
}

func (g *gatedBody) Read(b []byte) (int, error) {
	if !g.first {
		g.first = true
		return g.head.Read(b) // enough to flush the response's buffer
	}
	<-g.release
	return g.rest.Read(b)
}
func (g *gatedBody) Close() error { g.closed.Store(true); return nil }

// The lease is held while the message is sent and counts from the end of
// the transfer: a big message still streaming to the node when the lease
// ran out was handed, in full, to a second poller (or back to JetStream
// with replicas) while the first was still receiving it.
func TestPullLeaseHeldDuringTransfer(t *testing.T) {
	cfg := mobConfig(t)
	lease := 300 * time.Millisecond
	mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(lease)}, nil)
	defer mb.Close()
	content := "<v8msg:Message>" + strings.Repeat(" ", 200<<10) + "</v8msg:Message>"
	release := make(chan struct{})
	var closed atomic.Bool
	var opens atomic.Int32
	park(mb, mobMsg(watermill.NewUUID(), "CO", 1, content, func(context.Context) (io.ReadCloser, error) {
		if opens.Add(1) == 2 { // the first Open is the mailbox's own (park)
			return &gatedBody{head: strings.NewReader(content[:64<<10]), release: release, rest: strings.NewReader(content[64<<10:]), closed: &closed}, nil
		}
		return io.NopCloser(strings.NewReader(content)), nil
	}), 1)
	srv := httptest.NewServer(mobServer(cfg, mb))
	defer srv.Close()
	defer close(release)

	get := func() *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/nodes/MOB/messages/next", nil)
		req.Header.Set("Authorization", "Bearer mob-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first := get()
	defer first.Body.Close()
	b := make([]byte, 1)
	if _, err := io.ReadFull(first.Body, b); err != nil {
		t.Fatal(err)
	}
	// The first poller is still receiving (the body is not complete).
	time.Sleep(lease + 200*time.Millisecond)
	second := get()
	defer second.Body.Close()
	if second.StatusCode == 200 {
		t.Errorf("while poller 1 is still receiving message %s, poller 2 got it too (200, Relay-Message-Id %s); want 204 until the transfer has ended",
			first.Header.Get("Relay-Message-Id"), second.Header.Get("Relay-Message-Id"))
	}
}

// A node that stops reading a pulled message does not keep its handler
// and the message's reader past the server's end: Serve's shutdown closes
// the connections it waited 5 s for (it gave up without closing them).
func TestPullStalledReaderEndsAtShutdown(t *testing.T) {
	cfg := mobConfig(t)
	var closed atomic.Bool
	size := int64(256 << 20)
	offer := pull.Offer{ID: "id1", Name: "Message_CO_MOB.xml", Header: exchange.Header{ExchangePlan: "P", From: "CO", To: "MOB", MessageNo: 1}, Size: size, SHA256: "x",
		Open: func(context.Context) (io.ReadCloser, error) {
			return closeFlag{io.LimitReader(zeros{}, size), &closed}, nil
		}}
	s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, oneOffer{offer}}, "", slog.New(slog.DiscardHandler))
	c, stop := served(t, s)
	fmt.Fprint(c, "GET /api/v1/nodes/MOB/messages/next HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer mob-secret\r\n\r\n")
	time.Sleep(500 * time.Millisecond) // the socket buffers fill; the client reads nothing
	select {
	case <-stop():
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	// Serve's shutdown waits 5 s for handlers; allow that and more.
	deadline := time.Now().Add(8 * time.Second)
	for !closed.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !closed.Load() {
		t.Errorf("8 s after Serve's ctx ended, the pull handler still writes to a client that stopped reading: its goroutine and the message body stay open")
	}
	c.Close() // lets the leaked handler end
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

type closeFlag struct {
	io.Reader
	closed *atomic.Bool
}

func (c closeFlag) Close() error { c.closed.Store(true); return nil }

// recordingOutbox is oneOffer that records what the API does with it.
type recordingOutbox struct {
	oneOffer
	ackErr   error
	released atomic.Int32
}

func (b *recordingOutbox) Ack(string) error      { return b.ackErr }
func (b *recordingOutbox) Release(string, error) { b.released.Add(1) }

// A node that stops reading a pulled message is cut off after pullIdle
// without a byte taken, and the message is released to be fetched again at
// once: a handler had no write deadline and waited for ever.
func TestPullStalledReaderCut(t *testing.T) {
	cfg := mobConfig(t)
	var closed atomic.Bool
	size := int64(256 << 20)
	ob := &recordingOutbox{oneOffer: oneOffer{pull.Offer{ID: "id1", Name: "Message_CO_MOB.xml", Header: exchange.Header{ExchangePlan: "P", From: "CO", To: "MOB", MessageNo: 1}, Size: size, SHA256: "x",
		Open: func(context.Context) (io.ReadCloser, error) {
			return closeFlag{io.LimitReader(zeros{}, size), &closed}, nil
		}}}}
	s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, ob}, "", slog.New(slog.DiscardHandler))
	s.pullIdle = 300 * time.Millisecond
	c := serveConn(t, s)
	fmt.Fprint(c, "GET /api/v1/nodes/MOB/messages/next HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer mob-secret\r\n\r\n")
	deadline := time.Now().Add(10 * time.Second)
	for !closed.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !closed.Load() {
		t.Fatal("10 s after the node stopped reading, the pull handler still writes to it")
	}
	for ob.released.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if ob.released.Load() == 0 {
		t.Error("transfer broken off, but the message was not released to be fetched again")
	}
}

// An acknowledgement of a message the mailbox no longer offers (the relay
// is stopping, or it went back to JetStream) is 503: not acknowledged, the
// node fetches it again; not 404 "already acknowledged?".
func TestPullAckWithdrawnIs503(t *testing.T) {
	cfg := mobConfig(t)
	ob := &recordingOutbox{ackErr: fmt.Errorf("http_pull MOB: id1: %w", pull.ErrWithdrawn)}
	s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, ob}, "", slog.New(slog.DiscardHandler))
	if w := do(s, "POST", "/api/v1/nodes/MOB/messages/id1/ack", "192.0.2.7:5000", "Bearer mob-secret"); w.Code != http.StatusServiceUnavailable {
		t.Errorf("ack of a withdrawn message: %d %s, want 503", w.Code, strings.TrimSpace(w.Body.String()))
	}
}

// mobMsg is a message for MOB from `from` whose stored file reads back
// as the bytes open returns; its size and sha256 are those of content.
func mobMsg(id, from string, no uint64, content string, open func(ctx context.Context) (io.ReadCloser, error)) *message.Message {
	m := message.NewMessage(id, nil)
	exchange.SetHeader(m, exchange.Header{ExchangePlan: "P", From: from, To: "MOB", MessageNo: no})
	m.Metadata.Set(exchange.MetaFileName, "Message_"+from+"_MOB.xml")
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(content)))
	sum := sha256.Sum256([]byte(content))
	m.Metadata.Set(exchange.MetaSHA256, hex.EncodeToString(sum[:]))
	exchange.SetBody(m, open)
	return m
}

// park hands m to the mailbox and waits until n messages wait there; the
// channel gets Publish's result (when the node acknowledged, or not).
func park(mb *pull.Mailbox, m *message.Message, n int) <-chan error {
	done := make(chan error, 1)
	go func() { done <- mb.Publish("", m) }()
	for mb.Waiting() < n {
		time.Sleep(5 * time.Millisecond)
	}
	return done
}

// mobServer is the API for mobConfig whose MOB pulls from mb.
func mobServer(cfg *config.Config, mb *pull.Mailbox) *Server {
	return NewServer(cfg, pullBackend{&fakeBackend{ready: true}, mb}, "", slog.New(slog.DiscardHandler))
}

// TestPullLeaseHeldWhileOpening: the lease is held from Next on. It was
// held only once the body was open: an open slower than the lease (a slow
// object store, a NATS leader change) let it run out while the first
// poller's handler was still opening, and a second poller got the same
// message: one message handed to two clients at once (found by review).
func TestPullLeaseHeldWhileOpening(t *testing.T) {
	cfg := mobConfig(t)
	lease := 300 * time.Millisecond
	mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(lease)}, nil)
	defer mb.Close()
	content := "<v8msg:Message>hello</v8msg:Message>"
	var opens atomic.Int32
	m := mobMsg("slow-open-1", "CO", 1, content, func(ctx context.Context) (io.ReadCloser, error) {
		if opens.Add(1) == 2 { // 1st: the mailbox's own (park); 2nd: poller 1's fetch
			select {
			case <-time.After(lease + 500*time.Millisecond): // a slow open
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return io.NopCloser(strings.NewReader(content)), nil
	})
	park(mb, m, 1)
	srv := httptest.NewServer(mobServer(cfg, mb))
	defer srv.Close()
	get := func() (*http.Response, error) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/nodes/MOB/messages/next", nil)
		req.Header.Set("Authorization", "Bearer mob-secret")
		return http.DefaultClient.Do(req)
	}
	first := make(chan *http.Response, 1)
	go func() {
		resp, err := get()
		if err != nil {
			first <- nil
			return
		}
		first <- resp
	}()
	time.Sleep(lease + 150*time.Millisecond) // poller 1's handler is still opening the body
	second, err := get()
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := io.ReadAll(second.Body)
	second.Body.Close()
	r1 := <-first
	if r1 == nil {
		t.Fatal("poller 1's request failed")
	}
	b1, _ := io.ReadAll(r1.Body)
	r1.Body.Close()
	if r1.StatusCode == 200 && second.StatusCode == 200 && r1.Header.Get("Relay-Message-Id") == second.Header.Get("Relay-Message-Id") {
		t.Errorf("message %s handed to two pollers within one lease (poller 1 got %d bytes, poller 2 got %d bytes): "+
			"the lease ran out while poller 1's handler was opening the body, before holdLease started",
			r1.Header.Get("Relay-Message-Id"), len(b1), len(b2))
	}
}

// TestPullDamagedFileFailsItsDelivery: a stored file found damaged while
// it is sent (exchange.ErrDamaged, permanent) ends its delivery with that
// error, which the pipeline makes a dead letter. It was only released: the
// message stayed parked for good, its channel stuck, and since Next hands
// out the oldest waiting message, every later fetch got the same damaged
// file again (all but its last byte) and the node's other messages never
// (found by review).
func TestPullDamagedFileFailsItsDelivery(t *testing.T) {
	cfg := mobConfig(t)
	mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(5 * time.Minute)}, nil)
	defer mb.Close()
	good := "<v8msg:Message>good</v8msg:Message>"
	damaged := "<v8msg:Message>GOOD</v8msg:Message>" // same size, another sha256
	bad := mobMsg("damaged-1", "CO", 7, good, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(damaged)), nil
	})
	badDone := park(mb, bad, 1)
	park(mb, mobMsg("other-1", "WH", 3, good, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(good)), nil
	}), 2)
	s := mobServer(cfg, mb)

	gotOther := false
	damagedFetches := 0
	for range 5 {
		w := do(s, "GET", "/api/v1/nodes/MOB/messages/next", "192.0.2.7:5000", "Bearer mob-secret")
		if w.Code == 200 && w.Header().Get("X-Relay-From") == "WH" && w.Body.String() == good {
			gotOther = true
			break
		}
		if w.Header().Get("X-Relay-From") == "CO" {
			damagedFetches++
		}
	}
	var deadLettered bool
	select {
	case err := <-badDone:
		deadLettered = err != nil && exchange.IsPermanent(err) && errors.Is(err, exchange.ErrDamaged)
	case <-time.After(500 * time.Millisecond):
	}
	if !gotOther {
		t.Errorf("5 fetches after the CO message was found damaged: %d got the damaged CO file again, none the waiting WH message: "+
			"one damaged message blocks the node's whole mailbox", damagedFetches)
	}
	if !deadLettered {
		t.Errorf("the damaged message's Publish did not end with a permanent ErrDamaged: it stays parked for ever (no dead letter, its channel stuck)")
	}
}

// TestPullSharedTokenRefused: two nodes given the same token value
// (distinct variables, so validate cannot see it) can use the API neither.
// The token was kept for the first node and refused for the second only,
// so the second's holder pulled and acknowledged (took for good) the
// first's messages (found by review).
func TestPullSharedTokenRefused(t *testing.T) {
	t.Setenv("RELAY_TEST_MOB1_TOKEN", "same-secret")
	t.Setenv("RELAY_TEST_MOB2_TOKEN", "same-secret")
	cfg, err := config.Parse([]byte("nodes:\n  CO:\n    pickup: { dir: a }\n" +
		"  MOB1:\n    api_token_env: RELAY_TEST_MOB1_TOKEN\n    deliver: { http_pull: {} }\n" +
		"  MOB2:\n    api_token_env: RELAY_TEST_MOB2_TOKEN\n    deliver: { http_pull: {} }\n"))
	if err != nil {
		t.Fatal(err)
	}
	offer := pull.Offer{ID: "id1", Name: "Message_CO_MOB1.xml", Header: exchange.Header{ExchangePlan: "P", From: "CO", To: "MOB1", MessageNo: 1}, Size: 4, SHA256: bodySHA,
		Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("body")), nil }}
	s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, oneOffer{offer}}, "", slog.New(slog.DiscardHandler))
	for _, code := range []string{"MOB1", "MOB2"} {
		w := do(s, "GET", "/api/v1/nodes/"+code+"/messages/next", "192.0.2.7:5000", "Bearer same-secret")
		if w.Code == 200 {
			t.Errorf("a token that is both MOB1's and MOB2's pulled %s's mailbox (200): whoever holds the other node's token takes %s's messages; a shared token must identify neither", code, code)
		}
		w = do(s, "POST", "/api/v1/nodes/"+code+"/messages/id1/ack", "192.0.2.7:5000", "Bearer same-secret")
		if w.Code == 200 {
			t.Errorf("a token that is both MOB1's and MOB2's acknowledged a message of %s (200)", code)
		}
	}
}
