package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
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
	return []pipeline.Channel{{Plan: "P", From: "B", To: "A", Queued: 3, Resolved: 1, Writes: []uint64{1 << 62}, RecentSeqs: []uint64{7}}, {Plan: "P", From: "A", To: "B"}}, nil
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
	return "", fmt.Errorf("dead letter 1: still cannot be routed: %w", pipeline.ErrCannotRetry)
}
func (f *fakeBackend) Push(context.Context, *message.Message) (pipeline.Outcome, error) {
	return pipeline.Outcome{Result: pipeline.OutcomeQueued}, nil
}
func (f *fakeBackend) Outbox(string) Outbox          { return nil }
func (f *fakeBackend) Gatherer() prometheus.Gatherer { return prometheus.NewRegistry() }
func (f *fakeBackend) Trace(context.Context, pipeline.TraceQuery) ([]pipeline.Event, error) {
	return nil, nil
}
func (f *fakeBackend) DropDead(_ context.Context, seq uint64) error {
	f.dropped = append(f.dropped, seq)
	return nil
}
func (f *fakeBackend) SkipThrough(_ context.Context, plan, from, to string, no uint64) (pipeline.Channel, error) {
	if to != "B" {
		return pipeline.Channel{}, fmt.Errorf("%s:%s->%s: %w: %s is a latest node", plan, from, to, pipeline.ErrCannotSkip, to)
	}
	return pipeline.Channel{Plan: plan, From: from, To: to, DroppedNo: no}, nil
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
	r := httptest.NewRequest(method, "http://127.0.0.1:8088"+path, nil)
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
	// The state's bookkeeping is not shown (64-bit write ids lose
	// precision in JavaScript clients; found by review).
	if strings.Contains(body, "writes") || strings.Contains(body, "recent_seqs") {
		t.Errorf("channels show the state's bookkeeping: %s", body)
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

// Without relay.api_token_env the operator's API trusts loopback clients,
// and a browser on the relay's machine is one. A page of another site must
// not use it: a form it posts (no CORS preflight) is refused by its
// Sec-Fetch-Site or Origin, and a name of its own pointed at 127.0.0.1 (DNS
// rebinding) by the Host. 1C, scripts and relay's client send none of
// those headers, and reach it by IP address or localhost.
func TestBrowserRequestsRefused(t *testing.T) {
	s := newTestServer(t, "", &fakeBackend{ready: true})
	for _, c := range []struct {
		name, method, url string
		headers           map[string]string
		refused           bool
	}{
		{"retry from another site's form", "POST", "http://127.0.0.1:8088/api/v1/dead/1/retry",
			map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, true},
		{"push from another site's page, Origin only", "POST", "http://127.0.0.1:8088/api/v1/messages?name=Message_A_B.xml",
			map[string]string{"Origin": "https://evil.example"}, true},
		{"rebound name", "GET", "http://evil.example:8088/api/v1/channels", nil, true},
		{"rebound name, same-origin post", "POST", "http://evil.example:8088/api/v1/dead/1/retry",
			map[string]string{"Origin": "http://evil.example:8088", "Sec-Fetch-Site": "same-origin"}, true},
		{"the dashboard's own request", "POST", "http://127.0.0.1:8088/api/v1/dead/1/retry",
			map[string]string{"Origin": "http://127.0.0.1:8088", "Sec-Fetch-Site": "same-origin"}, false},
		{"a script by IP", "GET", "http://127.0.0.1:8088/api/v1/channels", nil, false},
		{"a script by localhost", "GET", "http://localhost:8088/api/v1/channels", nil, false},
		{"IPv6", "GET", "http://[::1]:8088/api/v1/channels", nil, false},
		{"listening on all addresses", "GET", "http://0.0.0.0:8088/api/v1/channels", nil, false},
	} {
		r := httptest.NewRequest(c.method, c.url, nil)
		r.RemoteAddr = "127.0.0.1:50000"
		for k, v := range c.headers {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if refused := w.Code == http.StatusForbidden; refused != c.refused {
			t.Errorf("%s: %d %s; refused: %v, want %v", c.name, w.Code, strings.TrimSpace(w.Body.String()), refused, c.refused)
		}
	}
}

// A stranger without a token who POSTs a push and trickles its body one
// byte at a time gets its 401 at once and loses the connection: it held a
// server goroutine and a file descriptor for as long as it trickled (Go's
// server read the rest of the body before answering).
func TestUnauthenticatedTrickleAnswered(t *testing.T) {
	be := &fakeBackend{ready: true}
	s := newTestServer(t, "s3cret", be)
	c := serveConn(t, s)
	fmt.Fprintf(c, "POST /api/v1/messages HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
			if _, err := c.Write([]byte("1\r\nx\r\n")); err != nil {
				return
			}
		}
	}()
	limit := 12 * time.Second
	c.SetReadDeadline(time.Now().Add(limit))
	start := time.Now()
	line, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case err == nil:
		t.Logf("answered after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(line))
		if !strings.Contains(line, "401") {
			t.Errorf("status line %q, want 401", line)
		}
	case isTimeout(err):
		t.Fatalf("no answer and connection still open after %s: an unauthenticated client holds the server as long as it trickles", limit)
	default:
		t.Logf("connection closed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
}

// serveConn serves s on a loopback port until the test ends and returns a
// connection to it.
func serveConn(t *testing.T, s *Server) net.Conn {
	t.Helper()
	c, _ := served(t, s)
	return c
}

// served is serveConn that also returns stop: it ends Serve's context and
// returns a channel closed once Serve has returned (the test's end does
// both too).
func served(t *testing.T, s *Server) (net.Conn, func() <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx, addr) }()
	t.Cleanup(func() { cancel(); <-done })
	var c net.Conn
	for range 50 {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, func() <-chan struct{} { cancel(); return done }
}

// A push whose sender stops sending mid-body is cut after pushIdle: the
// connection does not stay held, and nothing is stored.
func TestPushStallCut(t *testing.T) {
	t.Setenv("RELAY_TEST_A_TOKEN", "a-secret")
	cfg, err := config.Parse([]byte("nodes:\n  A:\n    api_token_env: RELAY_TEST_A_TOKEN\n    pickup: { dir: a }\n  B:\n    deliver: { dir: b }\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(cfg, &fakeBackend{ready: true}, "", slog.New(slog.DiscardHandler))
	s.pushIdle = 300 * time.Millisecond
	c := serveConn(t, s)
	fmt.Fprintf(c, "POST /api/v1/messages?name=Message_A_B.xml HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer a-secret\r\nContent-Length: 100000\r\n\r\n<v8msg:Message")
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	line, err := bufio.NewReader(c).ReadString('\n')
	if isTimeout(err) {
		t.Fatalf("a stalled upload still holds the connection after %s", time.Since(start).Round(time.Millisecond))
	}
	if err == nil && !strings.Contains(line, "400") {
		t.Fatalf("status line %q, want 400 (upload broken off)", line)
	}
}

// A client that declares a request body and never sends it is answered
// at once (and loses the connection) on the routes that do not read the
// body: healthz, the mux's 404, Go's cross-origin 403. Go's server read the
// body before answering, with no deadline, so the connection and its
// goroutine were held for ever.
func TestUnreadBodyNeverSentAnswered(t *testing.T) {
	for _, c := range []struct{ name, req string }{
		{"healthz", "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"},
		{"unknown path (404)", "POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"},
		{"cross-origin refusal (403)", "POST /api/v1/dead/1/retry HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 1000\r\n\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newTestServer(t, "s3cret", &fakeBackend{ready: true})
			conn := serveConn(t, s)
			fmt.Fprint(conn, c.req)
			limit := 3 * time.Second
			conn.SetReadDeadline(time.Now().Add(limit))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if isTimeout(err) {
				t.Fatalf("no answer and the connection still open after %s: a stranger holds a goroutine and a socket by declaring a body it never sends", limit)
			}
			t.Logf("answered: %q %v", line, err)
		})
	}
}

// Without relay.api_token_env the operator's endpoints answer loopback
// clients only. A request a reverse proxy on the same machine relays for a
// remote client arrives from 127.0.0.1 too; its Forwarded, X-Forwarded-For
// or X-Real-IP says so, and it is refused (403), not given the operator's
// rights.
func TestForwardedRequestIsNotLoopback(t *testing.T) {
	s := newTestServer(t, "", &fakeBackend{ready: true})
	for _, h := range []struct{ k, v string }{
		{"X-Forwarded-For", "203.0.113.9"},
		{"Forwarded", "for=203.0.113.9"},
		{"X-Real-IP", "203.0.113.9"},
	} {
		r := httptest.NewRequest("DELETE", "http://127.0.0.1:8088/api/v1/dead/1", nil)
		r.RemoteAddr = "127.0.0.1:40000"
		r.Header.Set(h.k, h.v)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "relay.api_token_env") {
			t.Errorf("request forwarded for a remote client (%s: %s): %d %s, want 403 naming relay.api_token_env (the operator's API answers loopback clients only)", h.k, h.v, w.Code, strings.TrimSpace(w.Body.String()))
		}
	}
}

// RFC 9110 §11.1: the auth scheme is case-insensitive; "bearer <token>"
// with the right token was answered 401 "missing bearer token".
func TestBearerSchemeCaseInsensitive(t *testing.T) {
	s := newTestServer(t, "s3cret", &fakeBackend{ready: true})
	w := do(s, "GET", "/api/v1/nodes", "192.0.2.7:5000", "bearer s3cret")
	if w.Code != 200 {
		t.Errorf("right token with scheme \"bearer\": %d %s, want 200", w.Code, strings.TrimSpace(w.Body.String()))
	}
}

// natsDownBackend fails every dead-letter read and write the way JetStream
// does when it does not answer.
type natsDownBackend struct{ *fakeBackend }

func (natsDownBackend) DeadLetter(context.Context, uint64) (pipeline.DeadLetter, error) {
	return pipeline.DeadLetter{}, errors.New("dead letter 1: nats: timeout")
}
func (natsDownBackend) DropDead(context.Context, uint64) error {
	return errors.New("dead letter 1: delete payload: nats: timeout")
}
func (natsDownBackend) RetryDead(context.Context, uint64) (string, error) {
	return "", errors.New("dead letter 1: publish: nats: timeout")
}

// A dead letter operation that fails because JetStream did not answer is
// 503 (the same request may be repeated), not 409 Conflict, which is kept
// for a retry refused for what the letter is (still cannot be routed).
func TestDeadLetterBackendFailureIs503(t *testing.T) {
	s := newTestServer(t, "", natsDownBackend{&fakeBackend{ready: true}})
	for _, c := range []struct{ method, path string }{{"GET", "/api/v1/dead/1"}, {"DELETE", "/api/v1/dead/1"}, {"POST", "/api/v1/dead/1/retry"}} {
		w := do(s, c.method, c.path, "127.0.0.1:5000", "")
		if w.Code < 500 {
			t.Errorf("%s %s with JetStream not answering: %d %s, want a 5xx (503)", c.method, c.path, w.Code, strings.TrimSpace(w.Body.String()))
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// openAPIDoc is the OpenAPI document as GET /api/v1/openapi.json serves it.
type openAPIDoc struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas   map[string]openAPISchema   `json:"schemas"`
		Responses map[string]json.RawMessage `json:"responses"`
	} `json:"components"`
}

// openAPISchema is the part of a schema the tests read.
type openAPISchema struct {
	Properties map[string]openAPISchema `json:"properties"`
}

// openAPIResponse is the part of a response the tests read.
type openAPIResponse struct {
	Ref         string `json:"$ref"`
	Description string `json:"description"`
}

// servedOpenAPI fetches the document from the API, as a client would.
func servedOpenAPI(t *testing.T) openAPIDoc {
	t.Helper()
	w := do(newTestServer(t, "", &fakeBackend{ready: true}), "GET", "/api/v1/openapi.json", "127.0.0.1:5000", "")
	if w.Code != 200 {
		t.Fatalf("GET /api/v1/openapi.json: %d %s", w.Code, w.Body)
	}
	var d openAPIDoc
	if err := json.Unmarshal(w.Body.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// responses gives the responses the document lists for method (lower
// case) on path, by status; a reference is resolved in components.
func (d openAPIDoc) responses(t *testing.T, path, method string) map[string]openAPIResponse {
	t.Helper()
	raw, ok := d.Paths[path][method]
	if !ok {
		t.Fatalf("openapi.json has no %s %s", method, path)
	}
	var op struct {
		Responses map[string]openAPIResponse `json:"responses"`
	}
	if err := json.Unmarshal(raw, &op); err != nil {
		t.Fatal(err)
	}
	for code, r := range op.Responses {
		if r.Ref == "" {
			continue
		}
		name, ok := strings.CutPrefix(r.Ref, "#/components/responses/")
		resolved, found := d.Components.Responses[name]
		if !ok || !found {
			t.Fatalf("%s %s: response %s refers to %q, which openapi.json does not hold", method, path, code, r.Ref)
		}
		if err := json.Unmarshal(resolved, &r); err != nil {
			t.Fatal(err)
		}
		op.Responses[code] = r
	}
	return op.Responses
}

// TestOpenAPIListsEveryStatus proves that the OpenAPI document the API
// serves lists, for each operation, the statuses the server really answers
// that are easy to miss: 400 for a dead letter id that is not a number, 401
// on every endpoint that takes a bearer token (the operator's and the
// nodes'), 405 for a HEAD of .../messages/next (it would lease the message)
// and 503 when the stored payload of a pulled message cannot be read. The
// README calls the document the description of everything the HTTP API does
// (found by review).
func TestOpenAPIListsEveryStatus(t *testing.T) {
	d := servedOpenAPI(t)
	open := newTestServer(t, "", &fakeBackend{ready: true})
	locked := newTestServer(t, "s3cret", &fakeBackend{ready: true})
	pullSrv := NewServer(mobConfig(t), pullBackend{&fakeBackend{ready: true}, nil}, "", slog.New(slog.DiscardHandler))
	// A stored payload that cannot be read: the pull answers 503.
	unreadable := pull.Offer{ID: "id1", Name: "Message_CO_MOB.xml", Size: 4,
		Open: func(context.Context) (io.ReadCloser, error) { return nil, errors.New("payload gone") }}
	brokenSrv := NewServer(mobConfig(t), pullBackend{&fakeBackend{ready: true}, oneOffer{unreadable}}, "", slog.New(slog.DiscardHandler))
	lo, remote := "127.0.0.1:5000", "192.0.2.7:5000"
	for _, c := range []struct {
		what         string
		s            *Server
		method, path string
		docPath      string
		remote, auth string
	}{
		{"dead letter id not a number", open, "GET", "/api/v1/dead/abc", "/api/v1/dead/{seq}", lo, ""},
		{"drop: id not a number", open, "DELETE", "/api/v1/dead/abc", "/api/v1/dead/{seq}", lo, ""},
		{"retry: id not a number", open, "POST", "/api/v1/dead/abc/retry", "/api/v1/dead/{seq}/retry", lo, ""},
		{"nodes without token", locked, "GET", "/api/v1/nodes", "/api/v1/nodes", remote, ""},
		{"dead list without token", locked, "GET", "/api/v1/dead", "/api/v1/dead", remote, ""},
		{"metrics without token", locked, "GET", "/metrics", "/metrics", remote, ""},
		{"trace without token", locked, "GET", "/api/v1/trace?q=x", "/api/v1/trace", remote, ""},
		{"skip without token", locked, "POST", "/api/v1/channels/skip?plan=P&from=A&to=B&through=3", "/api/v1/channels/skip", remote, ""},
		{"skip without a number", open, "POST", "/api/v1/channels/skip?plan=P&from=A&to=B", "/api/v1/channels/skip", lo, ""},
		{"skip on a latest node", open, "POST", "/api/v1/channels/skip?plan=P&from=B&to=A&through=3", "/api/v1/channels/skip", lo, ""},
		{"skip", open, "POST", "/api/v1/channels/skip?plan=P&from=A&to=B&through=3", "/api/v1/channels/skip", lo, ""},
		{"pull with a wrong token", pullSrv, "GET", "/api/v1/nodes/MOB/messages/next", "/api/v1/nodes/{code}/messages/next", remote, "Bearer nope"},
		{"pull of an unreadable payload", brokenSrv, "GET", "/api/v1/nodes/MOB/messages/next", "/api/v1/nodes/{code}/messages/next", lo, "Bearer mob-secret"},
		{"pull by HEAD", pullSrv, "HEAD", "/api/v1/nodes/MOB/messages/next", "/api/v1/nodes/{code}/messages/next", lo, "Bearer mob-secret"},
	} {
		w := do(c.s, c.method, c.path, c.remote, c.auth)
		method := c.method
		if method == "HEAD" {
			method = "GET" // the GET route takes HEAD: its operation is the GET's
		}
		docs := d.responses(t, c.docPath, strings.ToLower(method))
		_, listed := docs[strconv.Itoa(w.Code)]
		if _, dflt := docs["default"]; !listed && !dflt {
			t.Errorf("%s: %s %s answers %d, openapi.json lists only %v", c.what, c.method, c.path, w.Code, slices.Sorted(maps.Keys(docs)))
		}
	}
}

// TestOpenAPISchemasHaveEveryField proves that every field the API writes
// in a node (GET /api/v1/nodes) and a dead letter (GET /api/v1/dead...),
// each field set, is named in its schema in the OpenAPI document, down to
// the fields of a dead letter's message header (found by review).
func TestOpenAPISchemasHaveEveryField(t *testing.T) {
	d := servedOpenAPI(t)
	for _, c := range []struct {
		schema string
		v      any
	}{
		{"Node", NodeView{Code: "A", Title: "t", Mode: "latest", Relay: "hq", Served: true, Pickup: "dir", Deliver: "dir", PickupError: "e", DeliverError: "e"}},
		{"DeadLetter", pipeline.DeadLetter{Seq: 1, Node: "A", Stage: "deliver", Reason: "r", Source: "s", FileName: "f",
			Header: &exchange.Header{Dialect: exchange.DialectPlatform, ExchangePlan: "P", From: "A", To: "B", MessageNo: 2, ReceivedNo: 1},
			MsgID:  "m", Object: "o", Size: 1, SHA256: "x", StreamSeq: 2}},
	} {
		b, err := json.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		var missing []string
		var walk func(prefix string, v json.RawMessage, s openAPISchema)
		walk = func(prefix string, v json.RawMessage, s openAPISchema) {
			var fields map[string]json.RawMessage
			if json.Unmarshal(v, &fields) != nil {
				return // not an object: no fields to name
			}
			for k, fv := range fields {
				ps, ok := s.Properties[k]
				if !ok {
					missing = append(missing, prefix+k)
					continue
				}
				if ps.Properties != nil {
					walk(prefix+k+".", fv, ps)
				}
			}
		}
		walk("", b, d.Components.Schemas[c.schema])
		if len(missing) > 0 {
			slices.Sort(missing)
			t.Errorf("schema %s in openapi.json lacks %v, which the API writes", c.schema, missing)
		}
	}
}

// TestOpenAPIPullHeaders proves that the OpenAPI document names every
// header a pulled message comes with (GET .../messages/next, 200): the
// node reads the file's name, plan, addresses, numbers and sha256 from
// them, and X-Relay-File was sent without being documented. Content-Type
// and Content-Length are the content's own and need no mention (found by
// review).
func TestOpenAPIPullHeaders(t *testing.T) {
	d := servedOpenAPI(t)
	desc := d.responses(t, "/api/v1/nodes/{code}/messages/next", "get")["200"].Description
	named := map[string]bool{"Content-Type": true, "Content-Length": true}
	for _, w := range strings.FieldsFunc(desc, func(r rune) bool { return strings.ContainsRune(" ,;:()", r) }) {
		named[w] = true
	}
	offer := pull.Offer{ID: "id1", Name: "Message_CO_MOB.xml", Size: 4, SHA256: bodySHA,
		Header: exchange.Header{Dialect: exchange.DialectPlatform, ExchangePlan: "P", From: "CO", To: "MOB", MessageNo: 4},
		Open:   func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("body")), nil }}
	s := NewServer(mobConfig(t), pullBackend{&fakeBackend{ready: true}, oneOffer{offer}}, "", slog.New(slog.DiscardHandler))
	w := do(s, "GET", "/api/v1/nodes/MOB/messages/next", "127.0.0.1:5000", "Bearer mob-secret")
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	for k := range w.Header() {
		if !named[k] {
			t.Errorf("pulled file comes with header %s: %q, not named by openapi.json (%q)", k, w.Header().Get(k), desc)
		}
	}
}

// TestClientPushSendsExactlyItsSize: Push declared the file's size but sent
// the reader to its end, and for a size of 0 Go's client streamed it
// chunked: `relay send` of a file that says 0 and reads on (/dev/zero)
// fed the relay's spool without end. A file that grew after its stat was
// cut at the stated size and stored as a shorter message; one that shrank
// was told as "relay is not reachable" (found by review).
func TestClientPushSendsExactlyItsSize(t *testing.T) {
	c, got := pushRecorder(t)
	for _, tc := range []struct {
		name, file string
		size       int64
		changed    bool
	}{
		{"reads on, says 0", "0000", 0, true},
		{"grew", "<Message>0123</Message>", 9, true},
		{"shrank", "<Message/>", 100, true},
		{"as it was", "<Message/>", 10, false},
	} {
		*got = nil
		_, err := c.Push(context.Background(), "Message_A_B.xml", strings.NewReader(tc.file), tc.size)
		if errors.Is(err, ErrChanged) != tc.changed || strings.Contains(fmt.Sprint(err), "not reachable") {
			t.Errorf("%s: %v", tc.name, err)
		}
		if want := []string{tc.file}; tc.changed && len(*got) > 0 || !tc.changed && !slices.Equal(*got, want) {
			t.Errorf("%s: the server received %q", tc.name, *got)
		}
	}
}

// TestClientPushFailsOnAReadErrorAtTheEnd: the look past a file's last
// byte ignored a read error there (a disk error), and the request went
// out complete; a read error with the last bytes was dropped the same way.
// The push fails now, before the last bytes go, naming the error.
func TestClientPushFailsOnAReadErrorAtTheEnd(t *testing.T) {
	c, got := pushRecorder(t)
	eio := errors.New("input/output error")
	const file = "<Message/>"
	for name, r := range map[string]io.Reader{
		"error after the last byte": io.MultiReader(strings.NewReader(file), iotest.ErrReader(eio)),
		"error with the last bytes": iotest.DataErrReader(io.MultiReader(strings.NewReader(file), iotest.ErrReader(eio))),
	} {
		*got = nil
		_, err := c.Push(context.Background(), "Message_A_B.xml", r, int64(len(file)))
		if !errors.Is(err, eio) {
			t.Errorf("%s: %v, want the read error", name, err)
		}
		if len(*got) > 0 {
			t.Errorf("%s: the server received %q", name, *got)
		}
	}
}

// pushRecorder is a client of a server that accepts every push and keeps
// each body it received whole in *got.
func pushRecorder(t *testing.T) (*Client, *[]string) {
	t.Helper()
	got := new([]string)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20)); err == nil {
			*got = append(*got, string(b))
		}
		writeJSON(w, http.StatusAccepted, PushReply{ID: "x"})
	}))
	t.Cleanup(srv.Close)
	return NewClient(srv.Listener.Addr().String(), ""), got
}
