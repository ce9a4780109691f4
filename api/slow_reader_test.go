package api

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// handlerGoroutines counts goroutines whose stack holds fn.
func handlerGoroutines(fn string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(fn)) {
			n++
		}
	}
	return n
}

// TestReaderThatStopsIsCutOff: anyone (no token) asks
// for /api/v1/openapi.json, pipelined, and never reads the answers. Only
// the pull handler set a write deadline (pullIdle), so the handler blocked
// in Write for as long as the client kept its socket open: each such
// connection held a goroutine and a file descriptor for ever (found by
// review). Every answer has replyWait from its first byte now.
func TestReaderThatStopsIsCutOff(t *testing.T) {
	s := newTestServer(t, "s3cret", &fakeBackend{ready: true})
	s.pullIdle = 300 * time.Millisecond
	s.replyWait = 300 * time.Millisecond
	// served gives a connection; open our own with a tiny receive buffer.
	c0, _ := served(t, s)
	addr := c0.RemoteAddr().String()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
	}}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var req strings.Builder
	for range 600 { // ~15 MB of answers
		fmt.Fprint(&req, "GET /api/v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	}
	go func() { _, _ = c.Write([]byte(req.String())) }()
	const fn = "api.(*Server).openapi"
	// Seen once is the setup's proof: with replyWait it may be cut by
	// the time it is looked at again (local CI).
	seen := false
	for deadline := time.Now().Add(5 * time.Second); !seen && time.Now().Before(deadline); {
		if seen = handlerGoroutines(fn) > 0; !seen {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !seen {
		t.Fatal("setup: never saw the handler blocked writing")
	}
	time.Sleep(4 * time.Second) // far past pullIdle, and the server's only timeouts are for reading
	if n := handlerGoroutines(fn); n > 0 {
		t.Errorf("a client that sent no token and reads nothing still holds %d handler goroutine(s) blocked writing, 4 s on, with no deadline: one per connection, for ever", n)
	}
}
