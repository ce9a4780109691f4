package bus

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/logtest"
	"github.com/relay1c/relay/test/realserver"
)

// The servers relay refuses for replicas > 1 (clusterReady), at start and
// at a reconnect, and how a connection's end is told.

// An administrator whose cluster is part-way through an upgrade needs to
// know which server is too old: relay checks only the one it connected to,
// and the refusal names it and its address.
func TestRefusalNamesTheServer(t *testing.T) {
	ns, _, err := realserver.StartHub(t.TempDir(), func(o *server.Options) { o.ServerName = "nats-2" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	addr := newSwitchProxy(t, strings.TrimPrefix(ns.ClientURL(), "nats://"), "2.9.10").ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: "nats://" + addr, Replicas: 3}, ID: "hq"}, slog.New(slog.DiscardHandler))
	if err == nil {
		b.Close()
		t.Fatal("Open with replicas 3 on a server saying 2.9.10 was not refused")
	}
	if !strings.Contains(err.Error(), "nats-2") || !strings.Contains(err.Error(), addr) {
		t.Errorf("the refusal names neither the server (nats-2) nor its address (%s): %v", addr, err)
	}
}

// switchProxy forwards 127.0.0.1 connections to upstream, saying the
// version it is told in the server's INFO lines and leaving out
// connect_urls (so the client reconnects through it).
type switchProxy struct {
	*tcpProxy
	version atomic.Pointer[string]
}

func newSwitchProxy(t *testing.T, upstream, version string) *switchProxy {
	t.Helper()
	p := &switchProxy{}
	p.version.Store(&version)
	ver := regexp.MustCompile(`"version":"[^"]*"`)
	urls := regexp.MustCompile(`,?"connect_urls":\[[^\]]*\]`)
	p.tcpProxy = newTCPProxy(t, upstream, func(_ int32, c, up net.Conn) {
		br := bufio.NewReader(up)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "INFO ") {
				line = ver.ReplaceAllString(line, `"version":"`+*p.version.Load()+`"`)
				line = urls.ReplaceAllString(line, "")
			}
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	})
	return p
}

// openBehindProxy opens a bus with replicas 3 on three Debian nats-server
// behind a switchProxy that says 2.15.2 (then what the test sets): a
// cluster relay starts on, whose next reconnect the test steers. The bus
// logs into buf; the caller closes it.
func openBehindProxy(t *testing.T, buf *logtest.Buffer) (*Bus, *switchProxy) {
	t.Helper()
	c := debianCluster(t)
	first := strings.TrimPrefix(strings.Split(c.ClientURL(), ",")[0], "nats://")
	p := newSwitchProxy(t, first, "2.15.2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: "nats://" + p.ln.Addr().String(), Replicas: 3}, ID: "hq"}, slog.New(slog.NewTextHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return b, p
}

// say makes the proxy say version from the next connection on, and cuts
// the ones there are: the clients reconnect through it.
func (p *switchProxy) say(version string) {
	p.version.Store(&version)
	p.drop()
}

// A relay with replicas 3 that started on a server saying 2.15.2 and
// reconnects (a restart, a rolling update gone back, a load balancer) to
// one saying 2.9.10 stops as it would have refused to start (Lost).
func TestReconnectToOldServerStops(t *testing.T) {
	var buf logtest.Buffer
	b, p := openBehindProxy(t, &buf)
	defer b.Close()
	p.say("2.9.10")
	if !waitLog(&buf, "nats reconnected", 15*time.Second) {
		t.Fatalf("no reconnect seen:\n%s", buf.String())
	}
	select {
	case <-b.Lost():
		if err := b.LostErr(); err == nil || !strings.Contains(err.Error(), "2.9.21 or later") {
			t.Fatalf("stopped for %v, want the server's version named", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("reconnected to nats-server %s with replicas 3 and ran on:\n%s", b.Conn.ConnectedServerVersion(), buf.String())
	}
}

// Lost is never closed by Close (its doc comment). A relay stopping
// (Close) while the server restarts, whose lane is still open and lands on
// a 2.9.10 server, must not have Lost closed after its own stop.
func TestLaneReconnectAfterCloseKeepsLostOpen(t *testing.T) {
	var buf logtest.Buffer
	b, p := openBehindProxy(t, &buf)
	l, err := b.Lane(context.Background(), "deliver A")
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	defer l.CloseLane()
	b.Close() // relay stops
	p.say("2.9.10")
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) &&
		!(l.Conn.IsConnected() && l.Conn.ConnectedServerVersion() == "2.9.10"); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if v := l.Conn.ConnectedServerVersion(); v != "2.9.10" {
		t.Fatalf("lane on %q, want the old server", v)
	}
	select {
	case <-b.Lost():
		t.Fatalf("Lost closed after Close: %v", b.LostErr())
	default:
	}
}

// Once a reconnect has found a server too old (Lost), relay is refused
// there as at start: its connections must not go on writing to it (a
// compare-and-set write of a channel's state here is what #4320 breaks).
func TestNoWritesAfterOldServerFound(t *testing.T) {
	var buf logtest.Buffer
	b, p := openBehindProxy(t, &buf)
	defer b.Close()
	p.say("2.9.10")
	select {
	case <-b.Lost():
	case <-time.After(20 * time.Second):
		t.Fatal("Lost not closed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rev, err := b.Channels.Create(ctx, "P.A.B", []byte("{}")); err == nil {
		t.Fatalf("after Lost (%v) a state write still went to nats-server %s (revision %d)", b.LostErr(), b.Conn.ConnectedServerVersion(), rev)
	}
}
