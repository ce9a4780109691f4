package pipeline

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
)

// replyStallProxy forwards TCP to target on 127.0.0.1; while stalled, what
// the server sends waits (the client's requests still reach the server): a
// write is applied, its answer is late, as when a stream leader is slow or
// changes, or a link drops answers for a few seconds.
type replyStallProxy struct {
	ln      net.Listener
	stalled atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

func startReplyStallProxy(t *testing.T, target string) *replyStallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyStallProxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go p.pipe(c, s, false)
			go p.pipe(s, c, true)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *replyStallProxy) pipe(from, to net.Conn, stallable bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		for stallable && p.stalled.Load() {
			time.Sleep(2 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			to.Close()
			return
		}
	}
}

// TestUpdateNotAppliedTwiceWhenAnswerLate: a state write the server applied
// but whose answer came too late (JetStream's 5 s API timeout; the caller's
// context still alive: ingest's, an API request's) is not applied again.
// Update retried on any error: the retry re-read the state, which held the
// change already, and applied fn on top again; Queued++ became +2 and the
// channel showed a message pending for ever (found by review).
func TestUpdateNotAppliedTwiceWhenAnswerLate(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, _ := hubServer(t)
	hb, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hb.Close)

	px := startReplyStallProxy(t, hub.Addr().String())
	nc, err := nats.Connect("nats://" + px.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.stalled.Store(false); nc.Close() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketChannels)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStates(kv)
	if _, err := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { c.Queued = 1 }); err != nil {
		t.Fatal(err)
	}

	// The next write's answer is late by a little more than the API timeout.
	px.stalled.Store(true)
	go func() { time.Sleep(5500 * time.Millisecond); px.stalled.Store(false) }()
	calls := 0
	_, uerr := s.Update(ctx, "P", "SRC", "DST", func(c *Channel) { calls++; c.Queued++ })

	c, err := NewStates(hb.Channels).Get(ctx, "P", "SRC", "DST")
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued != 2 {
		t.Fatalf("one Queued++ (Update returned %v, fn called %d times) left queued %d, want 2", uerr, calls, c.Queued)
	}
}

func (p *replyStallProxy) addr() string { return p.ln.Addr().String() }
