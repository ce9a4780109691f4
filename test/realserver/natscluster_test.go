package realserver

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startNATSClusterT starts a three-server cluster for t, stopped at
// cleanup. A missing nats-server skips, or fails under
// RELAY_E2E_REQUIRE_SERVERS=1.
func startNATSClusterT(t *testing.T) *NATSCluster {
	t.Helper()
	if _, err := exec.LookPath("nats-server"); err != nil {
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") == "1" {
			t.Fatal("nats-server missing (RELAY_E2E_REQUIRE_SERVERS=1)")
		}
		t.Skip("nats-server missing: install the Debian package nats-server (scripts/test.sh does)")
	}
	c, err := StartNATSCluster("", t.TempDir(), 3, "hq", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// A replicated stream keeps taking messages with one server stopped, and
// the stopped server's process is gone.
func TestNATSClusterSurvivesOneServer(t *testing.T) {
	c := startNATSClusterT(t)
	nc, err := nats.Connect(c.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	info, err := js.AccountInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Domain != "hq" {
		t.Fatalf("domain %q, want hq", info.Domain)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	pid := c.PID(0)
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("nats-server %d still running after Stop", pid)
	}
	var ok int
	for deadline := time.Now().Add(30 * time.Second); ok < 10 && time.Now().Before(deadline); {
		if _, err := js.Publish(ctx, "t.x", []byte("x")); err == nil {
			ok++
		} else {
			time.Sleep(200 * time.Millisecond)
		}
	}
	if ok < 10 {
		t.Fatalf("only %d publishes acked with one of three servers stopped", ok)
	}
	if err := c.Start(0); err != nil {
		t.Fatal(err)
	}
}
