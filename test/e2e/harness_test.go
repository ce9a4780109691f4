// Package e2e runs whole relays — in-process, and as the real binary — over
// real folders and a real NATS (embedded, or the Debian nats-server the test
// script starts when RELAY_TEST_NATS_URL is set).
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/daemon"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/pipeline"
	"github.com/relay1c/relay/test/realserver"
)

// natsURL is the external NATS to test against, or "" for embedded.
func natsURL() string { return os.Getenv("RELAY_TEST_NATS_URL") }

// site is a folder tree with one out/ and in/ per node and a routing.yaml.
type site struct {
	root   string
	listen string
	nodes  []string
	cfg    string
}

// nodeSpec adds per-node YAML (mode, after...) to the generated config.
// pickupYAML and deliverYAML, when set, are the raw flow-style values of
// `pickup:` and `deliver:` (e.g. `{ ftp: { url: ... }, after: delete }`)
// used instead of the dir defaults; `after` applies to the default only.
type nodeSpec struct {
	code        string
	mode        string
	after       string
	pickupYAML  string
	deliverYAML string
	// noDeliver leaves the node without a deliver endpoint.
	noDeliver bool
	// extraYAML is more of the node's keys, one "key: value" per line.
	extraYAML string
}

// freeAddr is a port on 127.0.0.1 held for the test: a relay killed and
// started again listens there again, and no server another test starts
// meanwhile can take it.
func freeAddr(t testing.TB) string {
	t.Helper()
	port, release, err := realserver.ReservePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// newSite writes routing.yaml for the nodes with dir endpoints and short
// settle times, and resets the external NATS if one is used.
func newSite(t testing.TB, specs ...nodeSpec) *site {
	t.Helper()
	s := &site{root: t.TempDir(), listen: freeAddr(t)}
	var b strings.Builder
	fmt.Fprintf(&b, "relay:\n  id: test\n  data_dir: ./data\n  listen: %s\nnats:\n  url: %q\nnodes:\n", s.listen, natsURL())
	for _, sp := range specs {
		s.nodes = append(s.nodes, sp.code)
		fmt.Fprintf(&b, "  %q:\n", sp.code)
		if sp.mode != "" {
			fmt.Fprintf(&b, "    mode: %s\n", sp.mode)
		}
		for line := range strings.Lines(sp.extraYAML) {
			fmt.Fprintf(&b, "    %s\n", strings.TrimSpace(line))
		}
		after := ""
		if sp.after != "" {
			after = fmt.Sprintf(", after: %q", sp.after)
		}
		if sp.pickupYAML != "" {
			fmt.Fprintf(&b, "    pickup: %s\n", sp.pickupYAML)
		} else {
			fmt.Fprintf(&b, "    pickup: { dir: { path: ./%s/out, settle: 200ms, poll_interval: 500ms, incomplete_timeout: 3s }%s }\n", sp.code, after)
		}
		switch {
		case sp.noDeliver:
		case sp.deliverYAML != "":
			fmt.Fprintf(&b, "    deliver: %s\n", sp.deliverYAML)
		default:
			fmt.Fprintf(&b, "    deliver: { dir: ./%s/in }\n", sp.code)
		}
		for _, d := range []string{"out", "in"} {
			if err := os.MkdirAll(filepath.Join(s.root, sp.code, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.cfg = filepath.Join(s.root, "routing.yaml")
	if err := os.WriteFile(s.cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if natsURL() != "" {
		resetExternal(t)
	}
	return s
}

// resetExternal deletes every relay stream and bucket on the external NATS
// so each test starts clean.
func resetExternal(t testing.TB) {
	t.Helper()
	nc, err := nats.Connect(natsURL())
	if err != nil {
		t.Fatalf("external nats: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []string{bus.StreamExchange, bus.StreamDead, bus.StreamEvents, "OBJ_" + bus.BucketPayloads, "KV_" + bus.BucketChannels, "KV_" + bus.BucketTaken, "KV_" + bus.BucketLeases} {
		if err := js.DeleteStream(ctx, s); err != nil && err != jetstream.ErrStreamNotFound {
			t.Fatalf("reset %s: %v", s, err)
		}
	}
}

func (s *site) out(node string) string { return filepath.Join(s.root, node, "out") }
func (s *site) in(node string) string  { return filepath.Join(s.root, node, "in") }

// running is an in-process relay.
type running struct {
	r    *daemon.Relay
	stop context.CancelFunc
	done chan error
	once sync.Once
}

// start runs a relay in-process on the site and waits until it is ready.
func (s *site) start(t testing.TB) *running {
	t.Helper()
	cfg, err := config.Load(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	r, err := daemon.Start(ctx, cfg, log, daemon.Options{Pipeline: pipeline.Options{AckWait: 5 * time.Second, MaxRetryDelay: 2 * time.Second}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	rn := &running{r: r, stop: cancel, done: make(chan error, 1)}
	go func() { rn.done <- r.Run(ctx) }()
	t.Cleanup(rn.close) // before anything can fail: a relay never ready is stopped too
	waitFor(t, 20*time.Second, "relay ready", func() bool { ok, _ := r.Ready(); return ok })
	return rn
}

// close stops the relay and waits for it; it may be called twice.
func (rn *running) close() {
	rn.once.Do(func() {
		rn.stop()
		select {
		case <-rn.done:
		case <-time.After(60 * time.Second):
		}
	})
}

// testWriter sends logs to t.Log, dropping them once the test ended.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// header makes a test header on plan P.
func header(from, to string, no, recv uint64) exchange.Header {
	return exchange.Header{ExchangePlan: "Магазины", From: from, To: to, MessageNo: no, ReceivedNo: recv}
}

// readNo returns the MessageNo of a delivered file, or 0 if absent/unreadable.
func readNo(path string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	info, err := exchange.Inspect(f, fi.Size(), exchange.DefaultLimits(), "")
	if err != nil {
		return 0
	}
	return info.Header.MessageNo
}

func sha(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sameFile(t testing.TB, a, b string) bool {
	t.Helper()
	x, err1 := os.ReadFile(a)
	y, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// acknowledge plays the 1C of a sequential node reading its folder: once
// inbox (the file from's messages land in) holds a number it has not
// acknowledged, it writes its next message to from into outbox with that
// number as ReceivedNo. Relay writes the next number of from → node over
// the file only after that (a folder holds one file per channel). Its
// messages are written one at a time, each once the one before was taken.
// It runs until the test ends.
func acknowledge(t testing.TB, outbox, node, from, inbox string) {
	t.Helper()
	out := filepath.Join(outbox, exchange.FileName(node, from, exchange.FormatXML))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var no, acked uint64
		for ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			read := readNo(inbox)
			if read <= acked || !gone(out) {
				continue
			}
			no++
			if _, err := exchangetest.WriteFile(outbox, header(node, from, no, read), 0, exchange.FormatXML); err != nil {
				t.Errorf("%s acknowledging %s's No %d: %v", node, from, read, err)
				return
			}
			acked = read
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}
