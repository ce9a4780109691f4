package bus

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/realserver"
)

// quietServer is an external nats-server (JetStream, 127.0.0.1) run in
// process; users, if any, are its only accounts.
func quietServer(t *testing.T, users []*server.User) *server.Server {
	t.Helper()
	ns, _, err := realserver.StartHub(t.TempDir(), func(o *server.Options) { o.Users = users })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// waitLog gives nats.go's callback goroutine time to run.
func waitLog(buf *syncBuffer, want string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(buf.String(), want) {
			return true
		}
	}
	return strings.Contains(buf.String(), want)
}

// A slow consumer on the connection (a subscription's pending limit hit
// once, long ago) leaves nats.go's LastError set while the connection runs
// on. relay's own clean Close must not be warned about as "nats
// disconnected" because of it.
func TestCleanCloseAfterSlowConsumerIsQuiet(t *testing.T) {
	ns := quietServer(t, nil)
	var buf syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: ns.ClientURL()}, ID: "hq"}, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := b.Conn.SubscribeSync("review.slow")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := b.Conn.Publish("review.slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	t.Logf("LastError before the clean Close: %v", b.Conn.LastError())
	b.Close()
	if waitLog(&buf, "nats disconnected", 2*time.Second) {
		t.Fatalf("a clean Close was warned about:\n%s", buf.String())
	}
	t.Logf("log:\n%s LastError after: %v", buf.String(), b.Conn.LastError())
}

// The same with a permissions violation: a relay user in a shared cluster
// whose account denies a subject relay (or a lane) touched once.
func TestCleanCloseAfterPermissionViolationIsQuiet(t *testing.T) {
	ns := quietServer(t, []*server.User{{
		Username: "relay", Password: "pw",
		Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"review.denied"}}},
	}})
	t.Setenv("RELAY_REVIEW_PW", "pw")
	var buf syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: ns.ClientURL(), User: "relay", PasswordEnv: "RELAY_REVIEW_PW"}, ID: "hq"},
		slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Conn.Publish("review.denied", []byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = b.Conn.Flush()
	time.Sleep(300 * time.Millisecond)
	t.Logf("LastError before the clean Close: %v", b.Conn.LastError())
	b.Close()
	if waitLog(&buf, "nats disconnected", 2*time.Second) {
		t.Fatalf("a clean Close was warned about:\n%s", buf.String())
	}
}

// A lane closed at a normal stop (CloseLane) is the same: quiet.
func TestCleanLaneCloseAfterSlowConsumerIsQuiet(t *testing.T) {
	ns := quietServer(t, nil)
	var buf syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: config.NATS{URL: ns.ClientURL()}, ID: "hq"}, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := b.Lane(ctx, "deliver A")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := l.Conn.SubscribeSync("review.slow")
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(1, -1)
	for range 5 {
		_ = l.Conn.Publish("review.slow", []byte("x"))
	}
	_ = l.Conn.Flush()
	time.Sleep(200 * time.Millisecond)
	l.CloseLane()
	if waitLog(&buf, "nats disconnected", 2*time.Second) {
		t.Fatalf("a lane's clean close was warned about:\n%s", buf.String())
	}
}
