package bus

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/test/logtest"
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
func waitLog(buf *logtest.Buffer, want string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(buf.String(), want) {
			return true
		}
	}
	return strings.Contains(buf.String(), want)
}

// openLogged opens a bus on the external server cfg names, logging into buf.
func openLogged(t *testing.T, cfg config.NATS, buf *logtest.Buffer) *Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, Settings{NATS: cfg, ID: "hq"}, slog.New(slog.NewTextHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// slowConsumer makes nc drop messages for a subscription once (its pending
// limit hit), which leaves nats.go's LastError set while nc runs on.
func slowConsumer(t *testing.T, nc *nats.Conn) {
	t.Helper()
	sub, err := nc.SubscribeSync("test.slow")
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := nc.Publish("test.slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	lastError(t, nc)
}

// lastError waits for nc's LastError to be set: otherwise the test would
// prove nothing.
func lastError(t *testing.T, nc *nats.Conn) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); nc.LastError() == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no error recorded on the connection")
		}
	}
}

// quiet fails the test if the log shows a disconnect warning.
func quiet(t *testing.T, buf *logtest.Buffer, what string) {
	t.Helper()
	if waitLog(buf, "nats disconnected", 2*time.Second) {
		t.Fatalf("%s was warned about:\n%s", what, buf.String())
	}
}

// A slow consumer on the connection, long ago, leaves nats.go's LastError
// set while the connection runs on: relay's own clean Close is not warned
// about as "nats disconnected" because of it.
func TestCleanCloseAfterSlowConsumerIsQuiet(t *testing.T) {
	var buf logtest.Buffer
	b := openLogged(t, config.NATS{URL: quietServer(t, nil).ClientURL()}, &buf)
	slowConsumer(t, b.Conn)
	b.Close()
	quiet(t, &buf, "a clean Close")
}

// The same with a permissions violation: a relay user in a shared cluster
// whose account denies a subject relay (or a lane) touched once.
func TestCleanCloseAfterPermissionViolationIsQuiet(t *testing.T) {
	ns := quietServer(t, []*server.User{{
		Username: "relay", Password: "pw",
		Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"test.denied"}}},
	}})
	t.Setenv("RELAY_TEST_PW", "pw")
	var buf logtest.Buffer
	b := openLogged(t, config.NATS{URL: ns.ClientURL(), User: "relay", PasswordEnv: "RELAY_TEST_PW"}, &buf)
	if err := b.Conn.Publish("test.denied", []byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = b.Conn.Flush()
	lastError(t, b.Conn)
	b.Close()
	quiet(t, &buf, "a clean Close")
}

// A lane closed at a normal stop (CloseLane) is the same: quiet.
func TestCleanLaneCloseAfterSlowConsumerIsQuiet(t *testing.T) {
	var buf logtest.Buffer
	b := openLogged(t, config.NATS{URL: quietServer(t, nil).ClientURL()}, &buf)
	defer b.Close()
	l, err := b.Lane(context.Background(), "deliver A")
	if err != nil {
		t.Fatal(err)
	}
	slowConsumer(t, l.Conn)
	l.CloseLane()
	quiet(t, &buf, "a lane's clean close")
}
