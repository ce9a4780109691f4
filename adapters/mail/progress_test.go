package mail

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relay1c/relay/config"
)

// idleRestartServer is a scripted IMAP server: it answers LOGIN, the
// first IDLE and its DONE, and never answers a second IDLE (a dovecot
// stuck on a lock, a proxy that lost its backend: the failure the
// io_timeout fix is about).
func idleRestartServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprint(conn, "* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
		r := bufio.NewReader(conn)
		idles, idleTag := 0, ""
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\r\n")
			if line == "DONE" {
				fmt.Fprintf(conn, "%s OK IDLE done\r\n", idleTag)
				continue
			}
			tag, cmd, _ := strings.Cut(line, " ")
			cmd, _, _ = strings.Cut(strings.ToUpper(cmd), " ")
			switch cmd {
			case "LOGIN":
				fmt.Fprintf(conn, "%s OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n", tag)
			case "IDLE":
				idles++
				idleTag = tag
				if idles == 1 {
					fmt.Fprint(conn, "+ idling\r\n")
				}
				// The restarted IDLE: never answered.
			default:
				fmt.Fprintf(conn, "%s OK done\r\n", tag)
			}
		}
	}()
	return ln.Addr().String()
}

// TestIdleRestartReplyBounded: with IDLE, the pickup marks the
// session waiting (imap.go:312) and go-imap restarts IDLE on its own every
// 28 minutes (IdleCommand.run: child.Close() then c.idle(), i.e. DONE and
// a new IDLE whose "+" it waits for). Those writes come while waiting, so
// progressConn arms no deadline for their reply; when poll_interval ends
// the wait nothing re-armed it, and idle.Close() waited for the restart
// goroutine for ever: a server that stopped answering at the restart held
// the pickup for good (found by review). A write while waiting makes its
// reply due when the wait ends. The restart's two calls
// are made here through the public API, as go-imap makes them, since its
// 28-minute interval is a constant.
func TestIdleRestartReplyBounded(t *testing.T) {
	addr := idleRestartServer(t)
	cfg := imapTestConfig(addr)
	cfg.IOTimeout = config.Duration(time.Second)
	t.Setenv("RELAY_TEST_IMAP_PASSWORD", "secret")
	tgt, err := cfg.target()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := cfg.tlsConfig(tgt.host)
	if err != nil {
		t.Fatal(err)
	}
	c, conn, err := dialIMAP(context.Background(), &cfg.Server, tgt, tc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	idle, err := c.Idle() // Pickup.wait: the IDLE the server answers
	if err != nil {
		t.Fatal(err)
	}
	conn.wait(true) // Pickup.wait: waiting for new mail
	done := make(chan error, 1)
	go func() {
		// What IdleCommand.run does after 28 minutes: DONE, then a new IDLE.
		if err := idle.Close(); err != nil {
			done <- err
			return
		}
		if err := idle.Wait(); err != nil {
			done <- err
			return
		}
		_, err := c.Idle()
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	conn.wait(false) // poll_interval fired: the pickup ends its wait
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the reply to IDLE restarted during the wait never came, and 5s after the wait ended (io_timeout 1s) nothing bounds it: the pickup's idle.Close() waits for ever")
	}
}

// slowMemory is a pickup memory (the EXCHANGE_TAKEN KV bucket) with the
// latency of a KV across a leaf link.
type slowMemory struct {
	*memMemory
	d time.Duration
}

func (m slowMemory) Seen(ctx context.Context, k, fp string) (bool, error) {
	time.Sleep(m.d)
	return m.memMemory.Seen(ctx, k, fp)
}

// TestMemoryLookupNotServerSilence: the reply deadline a command arms
// stays armed after the reply is in (expect is cleared only by wait(true)),
// so local work between the end of one reply and the next command counts
// as the server's silence. With after: keep, takeOne asks the pickup
// memory (a JetStream KV) before the FETCH: a KV slower than io_timeout
// ended every session with an IMAP "i/o timeout", and the mail was never
// taken (found by review). A memory lookup pauses the count now.
func TestMemoryLookupNotServerSilence(t *testing.T) {
	var sessions atomic.Int32
	s := startMemIMAPWith(t, nil, func(se imapserver.Session) imapserver.Session {
		sessions.Add(1)
		return se
	})
	s.add(t, "INBOX", testMail(t, "Message_ЦО_ОП.xml", fixture(t, "Message_ЦО_ОП.xml"), part{1, 1}, 0))
	c := imapTestConfig(s.addr)
	c.IOTimeout = config.Duration(time.Second)
	mem := &memMemory{m: map[string]string{}}
	out, p := runPickupWith(t, "ЦО", c, config.After{Action: config.AfterKeep}, mem, func(p *Pickup) {
		p.mem = slowMemory{mem, 2500 * time.Millisecond}
	})
	select {
	case m := <-out:
		m.Ack()
	case <-time.After(8 * time.Second):
		last, _ := p.Last.LastError()
		t.Fatalf("mail not taken in 8s: a 2.5s pickup-memory lookup with io_timeout 1s ended %d sessions; status: %q", sessions.Load(), last)
	}
}
