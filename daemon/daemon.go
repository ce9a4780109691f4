// Package daemon is one running relay: it wires routing.yaml, NATS, the
// pipeline and the HTTP API together. `relay run` and the in-process
// end-to-end tests start relays through it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay1c/relay/adapters"
	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/pipeline"
)

// Relay is a started relay.
type Relay struct {
	cfg  *config.Config
	bus  *bus.Bus
	pipe *pipeline.Pipeline
	api  *api.Server
	log  *slog.Logger
	live atomic.Bool
	lock *dataLock    // data_dir's, released at the end of Run
	ln   net.Listener // the API's, opened by Start
}

// Options tune a relay beyond routing.yaml (tests shorten timeouts).
type Options struct {
	Pipeline pipeline.Options
}

// Start validates cfg, takes data_dir (refused while another relay holds
// it), opens NATS and builds the pipeline. Call Run next: it gives data_dir
// up at its end.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger, opts Options) (*Relay, error) {
	reg := adapters.New(cfg)
	if problems := cfg.Problems(reg); len(problems) > 0 {
		return nil, fmt.Errorf("routing.yaml is not valid:\n  %s", strings.Join(problems, "\n  "))
	}
	// Before NATS: a second embedded server on the same JetStream store
	// would corrupt it, and with an external NATS the spool is shared.
	dataDir := cfg.Resolve(cfg.Relay.DataDir)
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	// The API's port before NATS: one that is taken stops the start
	// before anything runs (found by a walk through the quick start:
	// "relay started" was logged, then the port was found taken).
	ln, err := api.Listen(cfg.Relay.Listen)
	if err != nil {
		return nil, errors.Join(err, lock.release())
	}
	token := ""
	if cfg.Relay.APITokenEnv != "" {
		if token = config.APIToken(cfg.Relay.APITokenEnv); token == "" {
			// The shipped routing.yaml names a variable nobody set for a
			// first run; elsewhere it may be a typo or a Secret without
			// the key, and the operator's token is off: say so.
			log.Warn("relay.api_token_env names a variable that is not set: the operator's API answers loopback clients only, without a token", "variable", cfg.Relay.APITokenEnv)
		}
	}
	b, err := bus.Open(ctx, bus.Settings{
		NATS: cfg.NATSSettings(), DataDir: dataDir, ID: cfg.Relay.ID, LeaseTTL: cfg.Relay.LeaseTTL.Std(),
	}, log)
	if err != nil {
		ln.Close()
		return nil, errors.Join(err, lock.release())
	}
	pipe, err := pipeline.New(cfg, b, reg, log, opts.Pipeline)
	if err != nil {
		ln.Close()
		b.Close()
		return nil, errors.Join(err, lock.release())
	}
	r := &Relay{cfg: cfg, bus: b, pipe: pipe, log: log, lock: lock, ln: ln}
	r.api = api.NewServer(cfg, r, token, log.With("component", "api"))
	return r, nil
}

// Run serves until ctx ends, then stops everything, closes NATS and gives
// data_dir up.
func (r *Relay) Run(ctx context.Context) (err error) {
	// Last, after NATS shut down: the store is closed when the next relay
	// may take data_dir.
	defer func() {
		if err := r.lock.release(); err != nil {
			r.log.Warn("cannot release data_dir", "err", err)
		}
		// The operator's sign that the stop was clean: everything below
		// has finished and data_dir is free for the next relay.
		r.log.Info("stopped")
	}()
	// The API stops after NATS closed: while the deliveries in flight
	// finish and NATS closes, /healthz and /readyz answer 503 (the API
	// stopped with the rest and a probe got "connection refused", found
	// by review).
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	apiErr := make(chan error, 1)
	go func() { apiErr <- r.api.ServeOn(apiCtx, r.ln) }()
	apiEnded := false
	defer func() {
		stopAPI()
		if !apiEnded {
			err = errors.Join(err, <-apiErr)
		}
	}()
	defer r.bus.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.live.Store(true)
	pipeErr := make(chan error, 1)
	go func() { pipeErr <- r.pipe.Run(ctx) }()
	swept := make(chan struct{})
	go func() { r.sweep(ctx); close(swept) }()
	defer func() { cancel(); <-swept }() // before the bus closes
	select {
	case err = <-apiErr:
		apiEnded = true
		r.live.Store(false)
		cancel()
		<-pipeErr
	case err = <-pipeErr:
		r.live.Store(false)
	case <-r.bus.Lost():
		// Exit, so that the service manager restarts relay: a relay that
		// runs on without NATS would look alive and do nothing.
		r.live.Store(false)
		err = r.bus.LostErr()
		r.log.Error("stopping", "err", err)
		cancel()
		err = errors.Join(err, <-pipeErr)
	case <-ctx.Done():
		r.live.Store(false)
		r.log.Info("stopping: finishing the deliveries in flight, closing NATS")
		err = <-pipeErr
	}
	return err
}

// partialAge is how old the marker of an unfinished payload put must be
// before sweep removes it with its chunks: far longer than any put takes.
const partialAge = 24 * time.Hour

// doneAge is how long a done record stays in EXCHANGE (bus.PurgeDone): as
// long as its Nats-Msg-Id is remembered, which a restarted server relearns
// from the records it holds.
const doneAge = bus.DuplicateWindow

// sweep removes, at start and then daily, what payload puts cut short by a
// crash left in the object store and no later put cleared, and the records
// of EXCHANGE that are done.
func (r *Relay) sweep(ctx context.Context) {
	t := time.NewTicker(partialAge)
	defer t.Stop()
	for first := true; ; first = false {
		if n, err := r.bus.SweepPartial(ctx, partialAge); err != nil && ctx.Err() == nil {
			r.log.Warn("cannot sweep unfinished payloads", "err", err)
		} else if n > 0 {
			r.log.Info("removed unfinished payloads a crash left behind", "count", n)
		}
		if first {
			// What another relay fetched while this one was down is
			// counted as handed over before its records go.
			select {
			case <-ctx.Done():
				return
			case <-r.pipe.HandoversCounted():
			}
		}
		if err := r.bus.PurgeDone(ctx, doneAge); err != nil && ctx.Err() == nil {
			r.log.Warn("cannot remove done records", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Live implements api.Backend.
func (r *Relay) Live() bool { return r.live.Load() }

// Ready implements api.Backend: NATS connected and every adapter started.
func (r *Relay) Ready() (bool, string) {
	switch {
	case !r.live.Load():
		return false, "stopping"
	case !r.bus.Connected():
		return false, "NATS not connected"
	case !r.pipe.Ready():
		return false, "adapters not started"
	}
	return true, ""
}

// Channels implements api.Backend.
func (r *Relay) Channels(ctx context.Context) ([]pipeline.Channel, error) {
	return r.pipe.States().List(ctx)
}

// DeadLetters implements api.Backend.
func (r *Relay) DeadLetters(ctx context.Context) ([]pipeline.DeadLetter, error) {
	return r.pipe.Dead().List(ctx)
}

// DeadLetter implements api.Backend.
func (r *Relay) DeadLetter(ctx context.Context, seq uint64) (pipeline.DeadLetter, error) {
	return r.pipe.Dead().Get(ctx, seq)
}

// RetryDead implements api.Backend.
func (r *Relay) RetryDead(ctx context.Context, seq uint64) (string, error) {
	return r.pipe.Retry(ctx, seq)
}

// DropDead implements api.Backend.
func (r *Relay) DropDead(ctx context.Context, seq uint64) error {
	return r.pipe.DropDead(ctx, seq)
}

// SkipThrough implements api.Backend.
func (r *Relay) SkipThrough(ctx context.Context, plan, from, to string, no uint64) (pipeline.Channel, error) {
	return r.pipe.SkipThrough(ctx, plan, from, to, no)
}

// Bus exposes the NATS side for tests and tools.
func (r *Relay) Bus() *bus.Bus { return r.bus }

// EndpointErrors implements api.Backend.
func (r *Relay) EndpointErrors(node string) (pickup, deliver string) {
	return r.pipe.EndpointErrors(node)
}

// Push implements api.Backend.
func (r *Relay) Push(ctx context.Context, m *message.Message) (pipeline.Outcome, error) {
	return r.pipe.Push(ctx, m)
}

// Outbox implements api.Backend: the node's http_pull mailbox, if it has one.
func (r *Relay) Outbox(node string) api.Outbox {
	if mb, ok := r.pipe.DeliverPublisher(node).(*pull.Mailbox); ok && mb != nil {
		return mb
	}
	return nil
}

// Gatherer implements api.Backend.
func (r *Relay) Gatherer() prometheus.Gatherer { return r.pipe.Gatherer() }

// Trace implements api.Backend.
func (r *Relay) Trace(ctx context.Context, q pipeline.TraceQuery) ([]pipeline.Event, error) {
	return r.pipe.Trace(ctx, q)
}
