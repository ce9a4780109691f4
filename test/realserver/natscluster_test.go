package realserver

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A replicated stream keeps taking messages with one server stopped, and
// the stopped server's process is gone.
func TestNATSClusterSurvivesOneServer(t *testing.T) {
	c := DebianNATSClusterT(t)
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
