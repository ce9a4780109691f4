// Package api serves relay's HTTP surface on relay.listen: health and
// readiness probes and the /api/v1 endpoints that `relay status` and
// `relay dead` use. It also holds the small client those commands use.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

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
	// EndpointErrors is a served node's current pickup and delivery trouble.
	EndpointErrors(node string) (pickup, deliver string)
}

// ChannelView is one channel as the API shows it.
type ChannelView struct {
	pipeline.Channel
	Pending uint64 `json:"pending"`
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
	log   *slog.Logger
	mux   *http.ServeMux
}

// NewServer builds the handler. An empty token restricts /api/ to loopback clients.
func NewServer(cfg *config.Config, be Backend, token string, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, be: be, token: token, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /api/v1/channels", s.auth(s.channels))
	s.mux.Handle("GET /api/v1/nodes", s.auth(s.nodes))
	s.mux.Handle("GET /api/v1/dead", s.auth(s.deadList))
	s.mux.Handle("GET /api/v1/dead/{seq}", s.auth(s.deadGet))
	s.mux.Handle("POST /api/v1/dead/{seq}/retry", s.auth(s.deadRetry))
	s.mux.Handle("DELETE /api/v1/dead/{seq}", s.auth(s.deadDrop))
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Serve listens on addr until ctx ends.
func (s *Server) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api: listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.log.Info("api listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api: %w", err)
	}
	return nil
}

func (s *Server) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.token == "" {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				writeErr(w, http.StatusForbidden, "the API answers loopback clients only unless relay.api_token_env is set")
				return
			}
		} else {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
				writeErr(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		h(w, r)
	})
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
	for _, c := range cs {
		out = append(out, ChannelView{Channel: c, Pending: c.Pending()})
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

func seqOf(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("dead letter id %q is not a positive number", r.PathValue("seq")))
		return 0, false
	}
	return seq, true
}

func (s *Server) deadStatus(err error) int {
	if errors.Is(err, pipeline.ErrNoDeadLetter) {
		return http.StatusNotFound
	}
	return http.StatusConflict
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

// ErrorBody is the JSON of every error reply.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
