package bus

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/logtest"
)

// A connection whose reply inbox the server lost (nats-server#5738: its
// interest gone under route churn; seen on a 3-server 2.15.2 cluster in CI)
// got no answer to any JetStream request for the 2 minutes Open retried on
// it, and Open failed. A reconnect re-sends the subscriptions: Open now
// reconnects after the second try in a row with no answer. (Under the
// caller's deadline the first request waited for all of it: each try has
// its own time now.)
func TestOpenReconnectsWhenRepliesAreLost(t *testing.T) {
	ns := quietServer(t, nil)
	p := newInboxEater(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	// Under a deadline, as a caller's start timeout gives one: each try
	// has its own time all the same (provisionTry).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var buf logtest.Buffer
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: "nats://" + p.ln.Addr().String()}, ID: "hq", provisionTry: 2 * time.Second},
		slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatalf("Open on a connection whose replies are lost: %v (%d replies dropped, %d connections)\n%s", err, p.dropped.Load(), p.conns.Load(), buf.String())
	}
	defer b.Close()
	if p.dropped.Load() == 0 {
		t.Fatal("the proxy dropped no reply: the test proves nothing")
	}
	if p.conns.Load() < 2 {
		t.Fatalf("%d connection through the proxy; want a reconnect through it", p.conns.Load())
	}
	if !strings.Contains(buf.String(), "reconnecting to re-send subscriptions") || !waitLog(&buf, "nats reconnected", 2*time.Second) {
		t.Errorf("the reconnect was not logged, or its handler did not run:\n%s", buf.String())
	}
	if _, err := b.Channels.Put(ctx, "P.A.B", []byte("{}")); err != nil {
		t.Errorf("a state write after Open: %v", err)
	}
}

// inboxEater forwards 127.0.0.1 connections to upstream. On the first one
// it swallows every message the server sends to an _INBOX subject, the
// replies of requests, and passes the rest (PING, PONG, INFO, other
// messages); later connections pass untouched. (A server outside a
// cluster offers no other address in its INFO: a reconnect comes back
// through the proxy.)
type inboxEater struct {
	*tcpProxy
	dropped atomic.Int32
}

func newInboxEater(t *testing.T, upstream string) *inboxEater {
	t.Helper()
	p := &inboxEater{}
	p.tcpProxy = newTCPProxy(t, upstream, func(nth int32, c, up net.Conn) { p.toClient(c, up, nth == 1) })
	return p
}

// toClient copies the server's protocol to the client, line by line: MSG
// <subject> <sid> [reply] <size> and HMSG <subject> <sid> [reply]
// <header size> <total size> are each followed by <size> bytes and CRLF,
// dropped with their line when the subject is an inbox. Unless eat, all
// is copied as it is.
func (p *inboxEater) toClient(c, up net.Conn, eat bool) {
	if !eat {
		_, _ = io.Copy(c, up)
		return
	}
	br := bufio.NewReader(up)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		out := []byte(line)
		if strings.HasPrefix(line, "MSG ") || strings.HasPrefix(line, "HMSG ") {
			f := strings.Fields(line)
			if len(f) < 4 {
				return
			}
			size, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return
			}
			body := make([]byte, size+2)
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
			if strings.HasPrefix(f[1], "_INBOX.") {
				p.dropped.Add(1)
				continue
			}
			out = append(out, body...)
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}
