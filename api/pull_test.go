package api

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// oneOffer is an outbox holding one message.
type oneOffer struct{ o pull.Offer }

func (b oneOffer) Next() (pull.Offer, bool) { return b.o, true }
func (b oneOffer) Ack(string) error         { return nil }

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
