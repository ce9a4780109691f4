package api

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClientSlowAnswer: a relay that answers later than the client waits
// is told apart from one that is not running — it may have done what was
// asked — and a retry or drop waits longer than the usual wait (found by
// review: "relay is not reachable ... is relay run running?" while a retry
// inspecting a big file was under way).
func TestClientSlowAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		if r.Method == http.MethodPost {
			w.Write([]byte(`{"id":"P/A/B/7/abc"}`))
		}
	}))
	t.Cleanup(srv.Close)
	c := NewClient(srv.Listener.Addr().String(), "")
	c.HTTP.Timeout = 100 * time.Millisecond
	_, err := c.Channels(context.Background())
	if err == nil || !strings.Contains(err.Error(), "did not answer within 100ms") || strings.Contains(err.Error(), "not reachable") {
		t.Errorf("slow answer: %v, want it told apart from a relay not running", err)
	}
	if id, err := c.RetryDead(context.Background(), 7); err != nil || id != "P/A/B/7/abc" {
		t.Errorf("retry answered after the usual wait: %q, %v; want its answer", id, err)
	}
	if err := c.DropDead(context.Background(), 7); err != nil {
		t.Errorf("drop answered after the usual wait: %v", err)
	}

	srv.Close()
	if _, err := c.Channels(context.Background()); err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("relay gone: %v, want not reachable", err)
	}

	// A host that drops the connection attempt times out too, before any
	// request went out: not reachable, nothing may have been done (found
	// by review).
	c.HTTP.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: ctx.Err()}
	}}
	if _, err := c.Channels(context.Background()); err == nil || strings.Contains(err.Error(), "may have been done") || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("no connection made: %v, want not reachable", err)
	}
}

// TestPushAnswerBounded: a relay that took the whole file and never
// answers (frozen by SIGSTOP, a JetStream that hangs, another program on
// relay.listen) held `relay send` for ever: the push had no limit at all
// (found by review). The upload has none; the answer after it has one.
func TestPushAnswerBounded(t *testing.T) {
	addr := silentRelay(t)
	c := NewClient(addr, "")
	c.pushAnswer = 500 * time.Millisecond
	body := "<Message/>"
	done := make(chan error, 1)
	go func() {
		_, err := c.Push(context.Background(), "Message_A_B.xml", strings.NewReader(body), int64(len(body)))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("push without an answer succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("push still waiting 30 s for an answer that never comes")
	}
}

// silentRelay is the address of a relay stand-in that reads one request
// whole and never answers, until the test ends.
func silentRelay(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release); ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			_, _ = io.Copy(io.Discard, req.Body)
		}
		<-release // never answers
	}()
	return ln.Addr().String()
}
