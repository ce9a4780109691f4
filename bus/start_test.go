package bus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/realserver"
)

// openFails runs Open and returns its error, failing the test if Open
// succeeds or takes longer than within.
func openFails(t *testing.T, set Settings, within time.Duration) error {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := time.Now()
	b, err := Open(context.Background(), set, log)
	if b != nil {
		b.Close()
	}
	if err == nil {
		t.Fatal("Open succeeded")
	}
	if took := time.Since(start); took > within {
		t.Errorf("Open took %s to fail, want under %s: %v", took.Round(time.Millisecond), within, err)
	}
	return err
}

// TestEmbeddedStartFailureSaysWhy: what stops the embedded server's start
// — JetStream cannot use data_dir/jetstream (here a file stands where its
// store goes; the same path as a folder left owned by root while relay now
// runs as its service user), or nats.listen's port is taken — fails the
// start at once with the server's own words (found by review: nats-server
// only logs such a failure, and Open waited 30 s, then guessed that
// another relay used the store, which relay.lock already rules out).
func TestEmbeddedStartFailureSaysWhy(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		name   string
		listen string
		prep   func(dir string)
		want   string
	}{
		{"store not a folder", "", func(dir string) {
			if err := os.MkdirAll(filepath.Join(dir, "jetstream"), 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "jetstream", "jetstream"), []byte("x"), 0o640); err != nil {
				t.Fatal(err)
			}
		}, "Can't start JetStream: storage directory is not a directory"},
		{"listen port taken", taken.Addr().String(), func(string) {}, "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.prep(dir)
			err := openFails(t, Settings{DataDir: dir, ID: "t", NATS: config.NATS{Listen: tc.listen}}, 10*time.Second)
			if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "another relay") {
				t.Errorf("error %q, want one saying %q", err, tc.want)
			}
		})
	}
}

// TestExternalConnectFailureSaysWhy: a first connection to an external
// NATS that never succeeds fails after ConnectWait saying why the last try
// failed (found by review: "no server reachable" alone, also for a server
// that answers and fails the TLS handshake, sent the operator looking for
// a firewall).
func TestExternalConnectFailureSaysWhy(t *testing.T) {
	ns, _, err := realserver.StartHub(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "nats://" + closed.Addr().String()
	closed.Close()
	for _, tc := range []struct {
		name string
		nats config.NATS
		want string
	}{
		{"tls to a plain server", config.NATS{URL: ns.ClientURL(), TLS: &config.TLS{}}, "secure connection not available"},
		{"nothing listens", config.NATS{URL: closedURL}, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := openFails(t, Settings{NATS: tc.nats, ID: "hq", ConnectWait: 2 * time.Second}, 15*time.Second)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one saying %q", err, tc.want)
			}
		})
	}
}

// TestServerLogOncePerKind: the embedded server's lines reach relay's log
// once a minute per kind, a kind being the format without the connection
// nats-server writes into it ("127.0.0.1:7422 - lid:5 - "): a refused leaf
// link reconnects every 2 s under a new id (found by review: logged every
// time, and every id remembered for good).
func TestServerLogOncePerKind(t *testing.T) {
	var buf strings.Builder
	l := newServerLog(slog.New(slog.NewTextHandler(&buf, nil)))
	for id := range 5 {
		l.Errorf(fmt.Sprintf("127.0.0.1:7422 - lid:%d - TLS leafnode handshake error: %%v", id), "tls: first record does not look like a TLS handshake")
	}
	l.Warnf("JetStream is slow: %s", "disk")
	if n := strings.Count(buf.String(), "TLS leafnode handshake error"); n != 1 {
		t.Errorf("%d lines of one kind, want 1:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "JetStream is slow") {
		t.Errorf("another kind not logged:\n%s", buf.String())
	}
	for i := range 2 * maxKinds {
		l.Warnf(fmt.Sprintf("kind %d: %%s", i), "x")
	}
	if n := len(l.last); n > maxKinds {
		t.Errorf("%d kinds remembered, want at most %d", n, maxKinds)
	}
}
