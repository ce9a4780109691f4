package api

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPushReusesConnection: relay send pushes each FILE argument with
// Push; the first bound on a push's answer cloned a fresh *http.Transport
// per push, so none reused the previous push's keep-alive connection and
// each left one idle open for 90 s (found by review). A client's pushes
// share one transport.
func TestPushReusesConnection(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x"}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), "")
	const files = 20
	for i := 0; i < files; i++ {
		body := "<Message/>"
		if _, err := c.Push(context.Background(), "Message_A_B.xml", strings.NewReader(body), int64(len(body))); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if conns > 2 {
		t.Fatalf("%d pushes opened %d connections (each left idle and open), want them reused", files, conns)
	}
}

// TestPushAnswerTimeoutMessage: a push whose answer does not come within
// the bound failed saying the relay "did not answer within 0s" (send named
// c.HTTP.Timeout, which Push sets to 0), not the bound that elapsed (found
// by review).
func TestPushAnswerTimeoutMessage(t *testing.T) {
	addr := silentRelay(t)
	c := NewClient(addr, "")
	c.pushAnswer = 300 * time.Millisecond
	body := "<Message/>"
	_, err := c.Push(context.Background(), "Message_A_B.xml", strings.NewReader(body), int64(len(body)))
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "within 0s") {
		t.Fatalf("error names a 0 s wait: %v", err)
	}
}
