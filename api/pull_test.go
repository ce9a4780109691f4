package api

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
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
func (b oneOffer) Release(string)           {}

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
	t.Setenv("RELAY_TEST_MOB_TOKEN", "mob-secret")
	cfg, err := config.Parse([]byte("nodes:\n  CO:\n    pickup: { dir: a }\n  MOB:\n    api_token_env: RELAY_TEST_MOB_TOKEN\n    deliver: { http_pull: {} }\n"))
	if err != nil {
		t.Fatal(err)
	}
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
		offer := pull.Offer{ID: "id1", Name: c.name, Header: c.h, Size: 4, SHA256: "x",
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

// Go's mux routes HEAD to the GET pattern of .../messages/next. A HEAD (a
// monitoring probe, a proxy's check) is refused: it leased the waiting
// message and read its payload for nothing, and the node's real GET then
// heard 204 "nothing waits" for the whole lease (5 min by default).
func TestPullHeadDoesNotLease(t *testing.T) {
	t.Setenv("RELAY_TEST_MOB_TOKEN", "mob-secret")
	cfg, err := config.Parse([]byte("nodes:\n  CO:\n    pickup: { dir: a }\n  MOB:\n    api_token_env: RELAY_TEST_MOB_TOKEN\n    deliver: { http_pull: {} }\n"))
	if err != nil {
		t.Fatal(err)
	}
	mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(5 * time.Minute)}, nil)
	defer mb.Close()
	body := []byte("<x/>")
	m := message.NewMessage(watermill.NewUUID(), nil)
	exchange.SetHeader(m, exchange.Header{ExchangePlan: "P", From: "CO", To: "MOB", MessageNo: 1})
	m.Metadata.Set(exchange.MetaFileName, "Message_CO_MOB.xml")
	m.Metadata.Set(exchange.MetaSize, strconv.Itoa(len(body)))
	exchange.SetBody(m, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil })
	go mb.Publish("", m)
	for mb.Waiting() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	s := NewServer(cfg, pullBackend{&fakeBackend{ready: true}, mb}, "", slog.New(slog.DiscardHandler))
	if w := do(s, "HEAD", "/api/v1/nodes/MOB/messages/next", "192.0.2.7:5000", "Bearer mob-secret"); w.Code != http.StatusMethodNotAllowed {
		t.Errorf("HEAD: %d, want 405", w.Code)
	}
	w := do(s, "GET", "/api/v1/nodes/MOB/messages/next", "192.0.2.7:5000", "Bearer mob-secret")
	if w.Code != 200 {
		t.Fatalf("GET after a HEAD: %d, want 200 with the waiting message (the HEAD leased it away)", w.Code)
	}
}
