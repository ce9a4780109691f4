package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/loopback"
)

// freezeProxy forwards TCP to target on 127.0.0.1 with latency each way
// (10 ms: a 20 ms round trip, as between a replica and a NATS server in
// another zone) and can be frozen: bytes stop moving both ways without the
// connection closing, as on a network partition (a NATS client only
// notices at its next ping, minutes later). With replies frozen, only what
// the server sends waits: a write is applied and its answer is late, as
// when a stream leader is slow or changes.
type freezeProxy struct {
	address string
	latency time.Duration
	frozen  atomic.Bool
	replies atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
}

func startFreezeProxy(t *testing.T, target string, latency time.Duration) *freezeProxy {
	t.Helper()
	p := &freezeProxy{latency: latency}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	p.address = loopback.Serve(t, func(c net.Conn) {
		s, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, s) // c, the client's end, is loopback.Serve's to close
		p.mu.Unlock()
		go p.pipe(c, s, false)
		p.pipe(s, c, true)
	})
	return p
}

// pipe copies from to to; fromServer says from is the server's side.
func (p *freezeProxy) pipe(from, to net.Conn, fromServer bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		time.Sleep(p.latency)
		for p.frozen.Load() || fromServer && p.replies.Load() {
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

func (p *freezeProxy) addr() string { return p.address }

// The lease's promise (lease.go, keep): "Without a successful renewal for
// 2/3 of the TTL the lease counts as lost here, well before the server lets
// another holder take it." Renewals run every TTL/3 and each may wait TTL/3
// for its answer; the 2/3 check is only made when an attempt has failed.
// When the holder's link to NATS stalls right after a successful renewal,
// the two attempts that follow time out at TTL/3+TTL/3 and TTL, so the
// holder learns of the loss only a full TTL after its last renewal — the
// very moment the server expires the key and another replica may take it.
// A pickup, fetch or channel delivery then still runs on the old holder
// while the new one starts: no margin at all for stopping it.
func TestLeaseLostBeforeOthersMayTakeIt(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hub, _ := hubServer(t)
	hb, err := bus.Open(ctx, bus.Settings{NATS: config.NATS{URL: hub.ClientURL()}, ID: "hq", LeaseTTL: ttl}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hb.Close)

	// Replica a talks to NATS through a link that will stall.
	px := startFreezeProxy(t, hub.Addr().String(), 10*time.Millisecond)
	nc, err := nats.Connect("nats://" + px.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.frozen.Store(false); nc.Close() })
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	akv, err := js.KeyValue(ctx, bus.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	a := &leases{kv: akv, owner: "a", ttl: ttl, log: log}
	b := &leases{kv: hb.Leases, owner: "b", ttl: ttl, log: log}

	w, err := hb.Leases.Watch(ctx, "k", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// Every write of the key, as the server stamped it.
	var wmu sync.Mutex
	var writes []time.Time
	go func() {
		for e := range w.Updates() {
			if e != nil {
				wmu.Lock()
				writes = append(writes, e.Created())
				wmu.Unlock()
			}
		}
	}()
	la, err := a.try(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer la.Release()
	// Let a's first renewal land (its answer too), then stall a's link.
	for {
		wmu.Lock()
		k := len(writes)
		wmu.Unlock()
		if k >= 2 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	px.frozen.Store(true)
	time.Sleep(200 * time.Millisecond) // a write still on its way is seen
	wmu.Lock()
	renewed := writes[len(writes)-1]
	wmu.Unlock()

	// Replica b asks often, to see when the server lets it in.
	took := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			lb, err := b.try(ctx, "k")
			if err == nil {
				took <- time.Now()
				lb.Release()
				return
			}
			if !errors.Is(err, errLeaseHeld) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var lostAt time.Time
	select {
	case <-la.Context().Done():
		lostAt = time.Now()
	case <-time.After(3 * ttl):
		t.Fatal("a never noticed it lost the lease")
	}
	var tookAt time.Time
	select {
	case tookAt = <-took:
	case <-ctx.Done():
		t.Fatal("b never took the lease")
	}
	lost, tk := lostAt.Sub(renewed), tookAt.Sub(renewed)
	t.Logf("after a's last renewal reached the server: a saw the lease lost at +%s, b took it at +%s (ttl %s)", lost.Round(time.Millisecond), tk.Round(time.Millisecond), ttl)
	if lost > 2*ttl/3+ttl/10 || tk-lost < ttl/6 {
		t.Fatalf("a saw its lease lost %s after its last renewal (promised: 2/3 of the ttl, %s), only %s before b could take it (both held it for %s if negative)",
			lost.Round(time.Millisecond), (2 * ttl / 3).Round(time.Millisecond), (tk - lost).Round(time.Millisecond), (lost - tk).Round(time.Millisecond))
	}
}

// failingPickup is a pickup adapter whose start fails (a folder it cannot
// create, the inotify limit reached, ...).
type failingPickup struct{}

func (failingPickup) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return nil, errors.New("dir N: watch /exchange/N/out: too many open files")
}
func (failingPickup) Close() error { return nil }

// On a shared NATS a pickup runs in lease terms, each with a fresh adapter.
// One that cannot start is only logged ("pickup not started"), term after
// term; relay status shows no pickup error (LastError asks the running
// adapter, and there is none), and /readyz says ready. The embedded-NATS
// relay, by contrast, refuses to run. Nothing tells the operator that
// nobody takes the node's messages.
func TestLeasedPickupStartFailureShown(t *testing.T) {
	t.Parallel()
	a, _ := testLeases(t)
	s := newLeasedPickup(a, "pickup.N", func() (message.Subscriber, error) { return failingPickup{}, nil }, a.log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := s.Subscribe(ctx, "N")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range out {
		}
	}()
	defer s.Close()
	time.Sleep(3 * testLeaseTTL)
	if msg, _ := s.LastError(); msg == "" {
		t.Fatal("the node's pickup has not run for 3 lease terms (its adapter fails to start), but LastError, the pickup_error of relay status, is empty")
	}
}
