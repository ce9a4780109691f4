package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/pipeline"
)

type fakeBackend struct {
	ready   bool
	dropped []uint64
}

func (f *fakeBackend) Live() bool { return true }
func (f *fakeBackend) EndpointErrors(node string) (string, string) {
	if node == "B" {
		return "ftp B: login: 530 Login incorrect.", ""
	}
	return "", ""
}
func (f *fakeBackend) Ready() (bool, string) {
	if !f.ready {
		return false, "NATS not connected"
	}
	return true, ""
}
func (f *fakeBackend) Channels(context.Context) ([]pipeline.Channel, error) {
	return []pipeline.Channel{{Plan: "P", From: "B", To: "A", Queued: 3, Resolved: 1}, {Plan: "P", From: "A", To: "B"}}, nil
}
func (f *fakeBackend) DeadLetters(context.Context) ([]pipeline.DeadLetter, error) {
	return []pipeline.DeadLetter{{Seq: 1, Reason: "bad"}}, nil
}
func (f *fakeBackend) DeadLetter(_ context.Context, seq uint64) (pipeline.DeadLetter, error) {
	if seq != 1 {
		return pipeline.DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, pipeline.ErrNoDeadLetter)
	}
	return pipeline.DeadLetter{Seq: 1}, nil
}
func (f *fakeBackend) RetryDead(_ context.Context, seq uint64) (string, error) {
	if seq != 1 {
		return "", fmt.Errorf("dead letter %d: %w", seq, pipeline.ErrNoDeadLetter)
	}
	return "", errors.New("still cannot be routed")
}
func (f *fakeBackend) Push(context.Context, *message.Message) error { return nil }
func (f *fakeBackend) Outbox(string) Outbox                         { return nil }
func (f *fakeBackend) Gatherer() prometheus.Gatherer                { return prometheus.NewRegistry() }
func (f *fakeBackend) Trace(context.Context, pipeline.TraceQuery) ([]pipeline.Event, error) {
	return nil, nil
}
func (f *fakeBackend) DropDead(_ context.Context, seq uint64) error {
	f.dropped = append(f.dropped, seq)
	return nil
}

func newTestServer(t *testing.T, token string, be Backend) *Server {
	t.Helper()
	cfg, err := config.Parse([]byte("nodes:\n  A:\n    deliver: { dir: a }\n  B:\n    relay: other\n    pickup: { dir: b }\n"))
	if err != nil {
		t.Fatal(err)
	}
	return NewServer(cfg, be, token, slog.New(slog.DiscardHandler))
}

func do(s *Server, method, path, remote, auth string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	r.RemoteAddr = remote
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func TestAuth(t *testing.T) {
	be := &fakeBackend{ready: true}
	open := newTestServer(t, "", be)
	if w := do(open, "GET", "/api/v1/channels", "127.0.0.1:5000", ""); w.Code != 200 {
		t.Errorf("loopback without token: %d", w.Code)
	}
	if w := do(open, "GET", "/api/v1/channels", "192.0.2.7:5000", ""); w.Code != http.StatusForbidden {
		t.Errorf("remote without a configured token: %d, want 403", w.Code)
	}
	locked := newTestServer(t, "s3cret", be)
	for _, c := range []struct {
		auth string
		code int
	}{{"", 401}, {"Bearer nope", 401}, {"Basic s3cret", 401}, {"Bearer s3cret", 200}} {
		if w := do(locked, "GET", "/api/v1/nodes", "192.0.2.7:5000", c.auth); w.Code != c.code {
			t.Errorf("auth %q: %d, want %d", c.auth, w.Code, c.code)
		}
	}
	if w := do(locked, "GET", "/healthz", "192.0.2.7:5000", ""); w.Code != 200 {
		t.Errorf("healthz needs no token: %d", w.Code)
	}
}

func TestEndpoints(t *testing.T) {
	be := &fakeBackend{}
	s := newTestServer(t, "", be)
	lo := "127.0.0.1:1"
	if w := do(s, "GET", "/readyz", lo, ""); w.Code != 503 || !strings.Contains(w.Body.String(), "NATS not connected") {
		t.Errorf("readyz not ready: %d %s", w.Code, w.Body)
	}
	be.ready = true
	if w := do(s, "GET", "/readyz", lo, ""); w.Code != 200 {
		t.Errorf("readyz ready: %d", w.Code)
	}
	w := do(s, "GET", "/api/v1/channels", lo, "")
	body := w.Body.String()
	if !strings.Contains(body, `"pending": 2`) || strings.Index(body, `"from": "A"`) > strings.Index(body, `"from": "B"`) {
		t.Errorf("channels not sorted or pending missing: %s", body)
	}
	if w := do(s, "GET", "/api/v1/nodes", lo, ""); !strings.Contains(w.Body.String(), `"served": false`) {
		t.Errorf("nodes: %s", w.Body)
	}
	if w := do(s, "GET", "/api/v1/dead/7", lo, ""); w.Code != 404 {
		t.Errorf("unknown dead letter: %d", w.Code)
	}
	if w := do(s, "GET", "/api/v1/dead/x", lo, ""); w.Code != 400 {
		t.Errorf("bad id: %d", w.Code)
	}
	if w := do(s, "POST", "/api/v1/dead/1/retry", lo, ""); w.Code != 409 || !strings.Contains(w.Body.String(), "still cannot be routed") {
		t.Errorf("failed retry: %d %s", w.Code, w.Body)
	}
	if w := do(s, "DELETE", "/api/v1/dead/1", lo, ""); w.Code != 204 || len(be.dropped) != 1 {
		t.Errorf("drop: %d %v", w.Code, be.dropped)
	}
}
