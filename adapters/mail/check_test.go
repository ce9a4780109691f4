package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// stallSelect is a session whose SELECT/EXAMINE never answers until
// release is closed: a mail server that hangs after the login.
type stallSelect struct {
	imapserver.Session
	release <-chan struct{}
}

func (s stallSelect) Select(mailbox string, o *imap.SelectOptions) (*imap.SelectData, error) {
	<-s.release
	return s.Session.Select(mailbox, o)
}

// TestCheckIMAPHonoursTimeoutAfterLogin: `relay check --timeout` (and
// Ctrl-C, both the check's ctx) end the IMAP check while it waits for the
// server's answer to SELECT. The ctx guarded only the dial and login;
// SELECT then waited io_timeout (2 min by default; for ever for a server
// that trickles untagged lines), whatever --timeout said (found by review).
func TestCheckIMAPHonoursTimeoutAfterLogin(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	s := startMemIMAPWith(t, imap.CapSet{imap.CapIMAP4rev1: {}}, func(sess imapserver.Session) imapserver.Session {
		return stallSelect{Session: sess, release: release}
	})
	t.Setenv("RELAY_TEST_IMAP_PASSWORD", "secret")
	c := imapTestConfig(s.addr) // io_timeout: the default 2m

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) // --timeout 500ms
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := CheckIMAP(ctx, "ЦО", c, slog.New(slog.DiscardHandler))
		done <- err
	}()
	select {
	case err := <-done:
		// The hint was the select step's "the mailbox folder does not
		// exist" (found by review).
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second || !strings.Contains(err.Error(), "no answer within --timeout") || !strings.Contains(err.Error(), "hint: the server hangs or is slow") {
			t.Fatalf("check ended after %s: %v, want the deadline", time.Since(start).Round(time.Millisecond), err)
		}
	case <-time.After(5 * time.Second):
		free()
		t.Fatalf("CheckIMAP still waiting for SELECT 5 s after its ctx (--timeout 500ms) expired: --timeout and Ctrl-C do not bound the IMAP check after login (io_timeout %s does)", c.IOTimeout.Std())
	}
}

// TestHintConnectTimeoutIsNotTheCheckTimeout: a TCP connect cut by the
// endpoint's connect_timeout (a firewall that drops SYNs, a wrong host)
// fails with net's "i/o timeout", which also says DeadlineExceeded: it was
// taken for the check's --timeout and blamed on a slow server (found by
// review). It keeps the firewall hint.
func TestHintConnectTimeoutIsNotTheCheckTimeout(t *testing.T) {
	d := net.Dialer{Timeout: time.Nanosecond} // connect_timeout already over
	_, derr := d.DialContext(context.Background(), "tcp", "127.0.0.1:1")
	if derr == nil {
		t.Fatal("a dial with a timeout of 1 ns succeeded")
	}
	err := fmt.Errorf("imap N: connect 127.0.0.1:1: %w", derr)
	h := hint(err)
	if !strings.Contains(h, "firewall") || strings.Contains(h, "--timeout") {
		t.Fatalf("connect timeout %q got hint %q, want the firewall/host hint (connect_timeout, not --timeout, ran out)", err, h)
	}
}
