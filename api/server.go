// Package api serves relay's HTTP surface on relay.listen: health and
// readiness probes and the /api/v1 endpoints that `relay status` and
// `relay dead` use. It also holds the small client those commands use.
package api

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/pipeline"
)

// Backend is what the API reads and acts on; the running relay implements it.
type Backend interface {
	Live() bool
	Ready() (bool, string)
	Channels(ctx context.Context) ([]pipeline.Channel, error)
	DeadLetters(ctx context.Context) ([]pipeline.DeadLetter, error)
	DeadLetter(ctx context.Context, seq uint64) (pipeline.DeadLetter, error)
	RetryDead(ctx context.Context, seq uint64) (string, error)
	DropDead(ctx context.Context, seq uint64) error
	// SkipThrough lets a sequential channel go on without the numbers
	// up to no it waits for (pipeline.Pipeline.SkipThrough).
	SkipThrough(ctx context.Context, plan, from, to string, no uint64) (pipeline.Channel, error)
	// EndpointErrors is a served node's current pickup and delivery trouble.
	EndpointErrors(node string) (pickup, deliver string)
	// Push takes a message pushed through the API into JetStream; a nil
	// error means it was taken, the outcome says how.
	Push(ctx context.Context, m *message.Message) (pipeline.Outcome, error)
	// Outbox is the http_pull mailbox of a served node, nil when it has none.
	Outbox(node string) Outbox
	// Gatherer holds the relay's Prometheus metrics.
	Gatherer() prometheus.Gatherer
	// Trace returns the recorded steps of messages.
	Trace(ctx context.Context, q pipeline.TraceQuery) ([]pipeline.Event, error)
}

// ChannelView is one channel as the API shows it.
type ChannelView struct {
	pipeline.Channel
	Pending uint64 `json:"pending"`
	// Alerts are what an operator must look at now: an acknowledgement
	// overdue (relay.ack_alert_after), a sender restored from a backup, a
	// sequential channel held on a gap.
	Alerts []string `json:"alerts,omitempty"`
}

// alerts judges a channel at now.
func alerts(c pipeline.Channel, ackAlertAfter time.Duration, now time.Time) []string {
	var out []string
	if c.AckedNo < c.DeliveredNo && !c.LastDeliveredAt.IsZero() && now.Sub(c.LastDeliveredAt) > ackAlertAfter {
		out = append(out, fmt.Sprintf("no acknowledgement for %s: delivered up to No %d, acknowledged No %d", now.Sub(c.LastDeliveredAt).Round(time.Minute), c.DeliveredNo, c.AckedNo))
	}
	if c.Warning != "" {
		out = append(out, c.Warning)
	}
	if c.HeldOnGap() && c.Pending() > 0 {
		out = append(out, c.LastError)
	}
	return out
}

// NodeView is one node as the API shows it.
type NodeView struct {
	Code    string `json:"code"`
	Title   string `json:"title,omitempty"`
	Mode    string `json:"mode"`
	Relay   string `json:"relay,omitempty"`
	Served  bool   `json:"served"`
	Pickup  string `json:"pickup,omitempty"`
	Deliver string `json:"deliver,omitempty"`
	// PickupError and DeliverError are the endpoints' current trouble
	// (cannot connect, log in, list), empty when they work.
	PickupError  string `json:"pickup_error,omitempty"`
	DeliverError string `json:"deliver_error,omitempty"`
}

// Server is the HTTP handler.
type Server struct {
	cfg   *config.Config
	be    Backend
	token string
	// nodeTokens maps a node's own token to its code.
	nodeTokens map[string]string
	spool      string
	log        *slog.Logger
	mux        *http.ServeMux
	// handler is mux behind cross-origin protection: a web page the
	// operator opens must not post to a relay that trusts loopback clients.
	handler http.Handler
	// pushIdle is how long a push's body may send nothing (a minute).
	pushIdle time.Duration
	// pullIdle is how long a pulling node may take no part of its file (a
	// minute).
	pullIdle time.Duration
	// replyWait bounds the writing of any other answer, from its first
	// byte: a caller that stops reading may not hold a handler, and its
	// connection, for ever (found by review: anyone could, without a
	// token, by asking for answers and never reading them).
	replyWait time.Duration
	// pushes holds a slot per push in progress: each spools up to
	// max_message_size, so their number is what bounds the spool.
	pushes chan struct{}
	// nodePushes counts the slots each node (by its own token) holds.
	nodePushesMu sync.Mutex
	nodePushes   map[string]int
}

// maxPushes is how many pushes relay takes at once; one more is answered
// 503 with Retry-After at once, before its body is read.
const maxPushes = 16

// maxNodePushes is how many of them one node's token may hold: a node
// trickling its uploads must not lock the others out (found by review).
const maxNodePushes = 4

// retryAfter is the Retry-After of every 503: the trouble is relay's and
// passing (a full push queue, JetStream briefly unavailable).
const retryAfter = "5"

// NewServer builds the handler. An empty token restricts the operator's
// endpoints to loopback clients; nodes with api_token_env authenticate with
// their own tokens from anywhere, for their own messages only.
func NewServer(cfg *config.Config, be Backend, token string, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, be: be, token: token, log: log, mux: http.NewServeMux(), nodeTokens: map[string]string{}, pushIdle: time.Minute, pullIdle: time.Minute, replyWait: 2 * time.Minute,
		pushes: make(chan struct{}, maxPushes), nodePushes: map[string]int{},
		spool: filepath.Join(cfg.Resolve(cfg.Relay.DataDir), "spool", "api")}
	// A token two nodes share (or a node and the operator) names none of
	// them: kept for the first, it would open that node's mailbox to the
	// other's holder.
	holders := map[string][]string{}
	for _, code := range cfg.NodeNames() {
		n := cfg.Nodes[code]
		if n == nil || n.APITokenEnv == "" {
			continue
		}
		if t := config.APIToken(n.APITokenEnv); t == "" {
			log.Warn("node token not set: the node cannot use the API", "node", code, "env", n.APITokenEnv)
		} else {
			holders[t] = append(holders[t], code)
		}
	}
	for t, codes := range holders {
		if len(codes) == 1 && t != token {
			s.nodeTokens[t] = codes[0]
			continue
		}
		for _, code := range codes {
			log.Error("node token is not unique (the operator's or another node's too): ignored, the node cannot use the API",
				"node", code, "env", cfg.Nodes[code].APITokenEnv)
		}
	}
	folder.ClearSpool(s.spool, log)
	s.mux.HandleFunc("GET /{$}", s.dashboard)
	s.mux.HandleFunc("GET /api/v1/openapi.json", s.openapi)
	s.mux.Handle("GET /metrics", s.auth(promhttp.HandlerFor(be.Gatherer(), promhttp.HandlerOpts{ErrorLog: slogErrors{log}}).ServeHTTP))
	s.mux.HandleFunc("POST /api/v1/messages", s.push)
	s.mux.HandleFunc("GET /api/v1/nodes/{code}/messages/next", s.pullNext)
	s.mux.HandleFunc("POST /api/v1/nodes/{code}/messages/{id}/ack", s.pullAck)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /api/v1/channels", s.auth(s.channels))
	s.mux.Handle("GET /api/v1/nodes", s.auth(s.nodes))
	s.mux.Handle("GET /api/v1/dead", s.auth(s.deadList))
	s.mux.Handle("GET /api/v1/trace", s.auth(s.trace))
	s.mux.Handle("GET /api/v1/dead/{seq}", s.auth(s.deadGet))
	s.mux.Handle("POST /api/v1/dead/{seq}/retry", s.auth(s.deadRetry))
	s.mux.Handle("DELETE /api/v1/dead/{seq}", s.auth(s.deadDrop))
	s.mux.Handle("POST /api/v1/channels/skip", s.auth(s.skip))
	// Browsers mark a request another site's page makes (Sec-Fetch-Site,
	// Origin); 1C, scripts and relay's own client send neither and pass.
	s.handler = closeUnread(http.NewCrossOriginProtection().Handler(s.mux))
	return s
}

// closeUnread answers with Connection: close whenever the reply starts
// while the request's body has not been read to its end. Go's server would
// otherwise read the rest (up to 256 KiB) before answering, and a client
// that declares a body and never sends it would hold the connection and a
// goroutine for ever on every reply that does not read it: healthz, the
// mux's 404 and 405, the cross-origin 403.
func closeUnread(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			h.ServeHTTP(w, r)
			return
		}
		b := &eofBody{ReadCloser: r.Body}
		r.Body = b
		h.ServeHTTP(&unreadGuard{ResponseWriter: w, body: b}, r)
	})
}

// eofBody notes that a request body has been read to its end.
type eofBody struct {
	io.ReadCloser
	eof atomic.Bool
}

func (b *eofBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof.Store(true)
	}
	return n, err
}

// unreadGuard is the ResponseWriter of closeUnread.
type unreadGuard struct {
	http.ResponseWriter
	body    *eofBody
	started bool
}

func (g *unreadGuard) WriteHeader(code int) {
	if !g.started && code >= 200 {
		g.started = true
		if !g.body.eof.Load() {
			g.Header().Set("Connection", "close")
		}
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *unreadGuard) Write(b []byte) (int, error) {
	if !g.started {
		g.WriteHeader(http.StatusOK)
	}
	return g.ResponseWriter.Write(b)
}

// FlushError lets http.ResponseController flush through the guard.
func (g *unreadGuard) FlushError() error {
	if !g.started {
		g.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(g.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (g *unreadGuard) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// ServeHTTP implements http.Handler. An answer is written within
// replyWait of its first byte (a pull sets its own deadlines past that),
// and flushed before the deadline is lifted for the connection's next
// request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := &replyWriter{ResponseWriter: w, rc: http.NewResponseController(w), wait: s.replyWait}
	s.handler.ServeHTTP(rw, r)
	if rw.started {
		_ = rw.rc.Flush()
		_ = rw.rc.SetWriteDeadline(time.Time{})
	}
}

// replyWriter sets the connection's write deadline when an answer starts.
type replyWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	wait    time.Duration
	started bool
}

func (w *replyWriter) start() {
	if !w.started {
		w.started = true
		_ = w.rc.SetWriteDeadline(time.Now().Add(w.wait)) // a test's recorder has none
	}
}

func (w *replyWriter) WriteHeader(code int) {
	if code >= 200 {
		w.start()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *replyWriter) Write(b []byte) (int, error) {
	w.start()
	return w.ResponseWriter.Write(b)
}

// FlushError lets http.ResponseController flush through the writer.
func (w *replyWriter) FlushError() error {
	w.start()
	return w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (w *replyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Serve listens on addr until ctx ends.
func (s *Server) Serve(ctx context.Context, addr string) error {
	ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.ServeOn(ctx, ln)
}

// Listen opens the API's port, so that a relay can find it taken before it
// starts anything else.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: listen %s: %w", addr, err)
	}
	return ln, nil
}

// ServeOn serves on ln until ctx ends, and closes it.
func (s *Server) ServeOn(ctx context.Context, ln net.Listener) error {
	addr := ln.Addr().String()
	// IdleTimeout: a kept-alive connection nobody uses is closed. A body
	// is bounded by the handler that reads it (push: pushIdle).
	// A pull's writes are bounded by the handler too (pullIdle), any
	// other answer's by ServeHTTP (replyWait).
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// Requests still running (a node taking a big file slowly):
			// their connections are closed, which ends their handlers.
			s.log.Warn("api: requests still running at shutdown: their connections are closed", "err", err)
			_ = srv.Close()
		}
	}()
	s.log.Info("api listening", "addr", ln.Addr().String())
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return fmt.Errorf("api: serve %s: %w", addr, err)
}

// caller is who made a request: the operator (admin) or a node with its
// own token.
type caller struct {
	admin bool
	node  string
}

// identify authenticates a request; on failure it has answered it.
func (s *Server) identify(w http.ResponseWriter, r *http.Request) (caller, bool) {
	// RFC 9110 §11.1: the scheme is case-insensitive.
	if scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		got = strings.TrimLeft(got, " ")
		if s.token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1 {
			return caller{admin: true}, true
		}
		for t, code := range s.nodeTokens {
			if subtle.ConstantTimeCompare([]byte(got), []byte(t)) == 1 {
				return caller{node: code}, true
			}
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
		refuse(w, http.StatusUnauthorized, "wrong bearer token")
		return caller{}, false
	}
	if s.token == "" {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			if h := forwardedBy(r); h != "" {
				refuse(w, http.StatusForbidden, fmt.Sprintf("the request came through a proxy (%s): without relay.api_token_env the API answers loopback clients only, and a proxy on this machine relays others; set relay.api_token_env to use the API through a proxy", h))
				return caller{}, false
			}
			if !rebindSafe(r.Host) {
				refuse(w, http.StatusForbidden, fmt.Sprintf("without relay.api_token_env the API answers requests to an IP address or localhost only, not to %q (a page of another site could point that name at this machine)", r.Host))
				return caller{}, false
			}
			return caller{admin: true}, true
		}
		refuse(w, http.StatusForbidden, "the API answers loopback clients only unless relay.api_token_env names a variable holding a token (or a node's own token is sent)")
		return caller{}, false
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
	refuse(w, http.StatusUnauthorized, "missing bearer token")
	return caller{}, false
}

// forwardedBy names the header by which a reverse proxy says it relays a
// request for another client, "" when there is none: such a request comes
// from loopback, but not from a loopback client.
func forwardedBy(r *http.Request) string {
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"} {
		if _, ok := r.Header[h]; ok {
			return h
		}
	}
	return ""
}

// rebindSafe says a request's Host cannot be a DNS rebinding: an IP
// address, localhost, or none. Another site's name made to resolve to
// 127.0.0.1 would otherwise give its pages the loopback operator's rights.
func rebindSafe(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return host == "" || net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost")
}

// auth lets only the operator through.
func (s *Server) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.identify(w, r)
		if !ok {
			return
		}
		if !c.admin {
			refuse(w, http.StatusForbidden, fmt.Sprintf("the token of node %q gives access to its own messages only", c.node))
			return
		}
		h(w, r)
	})
}

// slogErrors lets promhttp report gathering errors in the relay's log.
type slogErrors struct{ log *slog.Logger }

func (l slogErrors) Println(v ...any) { l.log.Warn("metrics: " + fmt.Sprint(v...)) }

//go:embed openapi.json
var openapiDoc []byte

// dashboardPage is the operator's page: static, it reads the API (with the
// token the operator gives it), so it shows only what the token allows.
//
//go:embed dashboard.html
var dashboardPage []byte

func (s *Server) dashboard(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'")
	_, _ = w.Write(dashboardPage)
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openapiDoc)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	if !s.be.Live() {
		writeErr(w, http.StatusServiceUnavailable, "not live")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if ok, why := s.be.Ready(); !ok {
		writeErr(w, http.StatusServiceUnavailable, why)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) channels(w http.ResponseWriter, r *http.Request) {
	cs, err := s.be.Channels(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]ChannelView, 0, len(cs))
	now := time.Now()
	for _, c := range cs {
		v := ChannelView{Channel: c, Pending: c.Pending(), Alerts: alerts(c, s.cfg.Relay.AckAlertAfter.Std(), now)}
		// The stored state's own bookkeeping (ids of its last writes,
		// stream sequences of its last resolved records) is not shown.
		v.Writes, v.RecentSeqs = nil, nil
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Plan != b.Plan {
			return a.Plan < b.Plan
		}
		if a.From != b.From {
			return a.From < b.From
		}
		return a.To < b.To
	})
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) nodes(w http.ResponseWriter, _ *http.Request) {
	out := []NodeView{}
	for _, code := range s.cfg.NodeNames() {
		n := s.cfg.Nodes[code]
		if n == nil {
			continue
		}
		v := NodeView{Code: code, Title: n.Title, Mode: string(n.Mode), Relay: n.Relay, Served: s.cfg.Serves(n)}
		if v.Served {
			v.PickupError, v.DeliverError = s.be.EndpointErrors(code)
		}
		if n.Pickup != nil {
			v.Pickup = n.Pickup.Kind
		}
		if n.Deliver != nil {
			v.Deliver = n.Deliver.Kind
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deadList(w http.ResponseWriter, r *http.Request) {
	ls, err := s.be.DeadLetters(r.Context())
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ls)
}

// trace answers ?q=<message id or file name>, or ?node=<code> for a node's
// latest events; limit caps the count.
func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	q := pipeline.TraceQuery{Match: r.URL.Query().Get("q"), Node: r.URL.Query().Get("node")}
	if q.Match == "" && q.Node == "" {
		writeErr(w, http.StatusBadRequest, "give q=<message id or file name> or node=<code>")
		return
	}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeErr(w, http.StatusBadRequest, "limit: want a positive number")
			return
		}
		q.Limit = n
	}
	evs, err := s.be.Trace(r.Context(), q)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, evs)
}

func seqOf(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("dead letter id %q is not a positive number", r.PathValue("seq")))
		return 0, false
	}
	return seq, true
}

// deadStatus is the status of a dead letter operation's error: 409 only
// for a retry refused for what the letter is; JetStream's failures are 503,
// and the same request may be repeated.
func (s *Server) deadStatus(err error) int {
	switch {
	case errors.Is(err, pipeline.ErrNoDeadLetter):
		return http.StatusNotFound
	case errors.Is(err, pipeline.ErrCannotRetry):
		return http.StatusConflict
	}
	return http.StatusServiceUnavailable
}

func (s *Server) deadGet(w http.ResponseWriter, r *http.Request) {
	seq, ok := seqOf(w, r)
	if !ok {
		return
	}
	l, err := s.be.DeadLetter(r.Context(), seq)
	if err != nil {
		writeErr(w, s.deadStatus(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (s *Server) deadRetry(w http.ResponseWriter, r *http.Request) {
	seq, ok := seqOf(w, r)
	if !ok {
		return
	}
	id, err := s.be.RetryDead(r.Context(), seq)
	if err != nil {
		writeErr(w, s.deadStatus(err), err.Error())
		return
	}
	s.log.Info("dead letter retried", "seq", seq, "message_id", id)
	writeJSON(w, http.StatusOK, map[string]string{"id": id})
}

func (s *Server) deadDrop(w http.ResponseWriter, r *http.Request) {
	seq, ok := seqOf(w, r)
	if !ok {
		return
	}
	if err := s.be.DropDead(r.Context(), seq); err != nil {
		writeErr(w, s.deadStatus(err), err.Error())
		return
	}
	s.log.Info("dead letter dropped", "seq", seq)
	w.WriteHeader(http.StatusNoContent)
}

// skip lets a sequential channel go on past a gap:
// ?plan=&from=&to=&through=N. 409 when there is nothing to skip there.
func (s *Server) skip(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	plan, from, to := q.Get("plan"), q.Get("from"), q.Get("to")
	no, err := strconv.ParseUint(q.Get("through"), 10, 64)
	if plan == "" || from == "" || to == "" || err != nil || no == 0 {
		writeErr(w, http.StatusBadRequest, "give plan, from, to and through=<message number>")
		return
	}
	c, err := s.be.SkipThrough(r.Context(), plan, from, to, no)
	switch {
	case errors.Is(err, pipeline.ErrCannotSkip):
		writeErr(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		writeErr(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.log.Info("gap skipped", "plan", plan, "from", from, "to", to, "through", no)
	writeJSON(w, http.StatusOK, c)
}

// ErrorBody is the JSON of every error reply.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	writeJSON(w, code, ErrorBody{Error: msg})
}

// refuse answers a request whose body is not read, and ends the
// connection: Go's server would otherwise read what is left of the body
// (up to 256 KiB) before answering, and a client trickling it holds the
// server for as long as it likes.
func refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Connection", "close")
	writeErr(w, code, msg)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
