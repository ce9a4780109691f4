// Package pipeline moves exchange messages: ingest handlers take what pickups
// emit into JetStream (payload to the object store, a small record to the
// EXCHANGE stream), delivery handlers take each node's records from a durable
// consumer and hand them to the node's deliver adapter. It owns routing,
// channel state, ordering (latest / sequential), dedup and dead letters.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Endpoints builds adapters from routing.yaml endpoints; the adapter registry
// implements it.
type Endpoints interface {
	Pickup(node string, e *config.Endpoint, mem *Memory, log *slog.Logger) (message.Subscriber, error)
	Deliver(node string, e *config.Endpoint, log *slog.Logger) (message.Publisher, error)
}

// Options tune the pipeline; zero values take defaults.
type Options struct {
	// AckWait is how long a delivery may go without a progress signal before
	// JetStream offers the message again (default 30s; long deliveries send
	// progress every AckWait/3).
	AckWait time.Duration
	// MaxRetryDelay caps the backoff between delivery attempts (default 5m).
	MaxRetryDelay time.Duration
	// FetchAckWait is how long another relay waits for a fetched record's
	// ack before offering it again (default 1m; a long payload copy sends
	// progress every FetchAckWait/3).
	FetchAckWait time.Duration
	// Limits bound what a message may be.
	Limits exchange.Limits
}

// Pipeline is one relay's running set of handlers.
type Pipeline struct {
	// payloads locks by-name payloads for ingest and finish (payloadLocks).
	payloads payloadLocks
	cfg      *config.Config
	b        *bus.Bus
	eps      Endpoints
	log      *slog.Logger
	opts     Options
	states   *States
	dead     *Dead
	mem      *Memory

	router *message.Router
	// handlers counts the router's handlers, for the start log line: the
	// router's own Handlers reads its map without the lock its stopping
	// handlers take to delete themselves (a data race).
	handlers int
	started  atomic.Bool
	closers  []func() error
	health   map[string]*endpoints
	// delivers are the served nodes' delivery publishers (the API reaches
	// http_pull mailboxes through them).
	delivers map[string]message.Publisher
	// pushLane carries messages pushed through the API.
	pushLane *lane
	metrics  *metrics
	// chanLocks serialises one channel's deliveries across the node's workers.
	chanLocks channelLocks
	// lowest is each sequential channel's lowest queued number, as holds
	// ask for it.
	lowest lowestQueued
	// unrecorded are outcomes whose channel-state write failed.
	unrecorded unrecorded
	// offeredUpTo is, by node, bus.OfferedUpTo of its delivery consumer.
	offeredUpTo sync.Map
	// leases coordinate replicas on a shared NATS; nil on an embedded one.
	leases *leases
	// fetches move records for served nodes from other relays' domains.
	fetches []*fetch
	// handovers count what other relays fetched from here; counted closes
	// when each has looked once (HandoversCounted).
	handovers []*handover
	counted   chan struct{}
}

// deliveryWorkers is how many messages of one node are delivered at once
// (different channels; a channel's messages wait for each other). Two keep
// a long delivery (a 1 GiB file) from holding up the node's other channels;
// more only added contention on 2 cores (bench throughput: 1 worker ~680
// msg/s, 2 ~630, 4 ~560, three runs each).
const deliveryWorkers = 2

// pollSharer is implemented by deliveries that wait for the node to come
// for its messages (http_pull): with replicas, the node comes to one of
// them, so they share where it pulls (see leases.pulls).
type pollSharer interface {
	Share(polled func(), elsewhere func() bool)
}

// superseder is a delivery that holds a message until the node fetches it
// (http_pull): in mode latest it lets a message go that a newer one of its
// channel supersedes meanwhile.
type superseder interface {
	Supersede(superseded func(m *message.Message) bool)
}

// errorReporter is implemented by adapters that can say what is wrong with
// their endpoint right now (cannot log in, cannot list); `relay status` shows it.
type errorReporter interface {
	LastError() (string, time.Time)
}

type endpoints struct{ pickup, deliver errorReporter }

// EndpointErrors returns the current trouble of a node's pickup and delivery
// endpoints, "" where there is none or the adapter cannot tell. A node's
// delivery trouble is also why its messages taken in by another relay
// cannot be fetched (the link is down, the other relay refuses).
func (p *Pipeline) EndpointErrors(node string) (pickup, deliver string) {
	e := p.health[node]
	if e == nil {
		return "", ""
	}
	if e.pickup != nil {
		pickup, _ = e.pickup.LastError()
	}
	if e.deliver != nil {
		deliver, _ = e.deliver.LastError()
	}
	for _, f := range p.fetches {
		if deliver != "" {
			break
		}
		if f.node == node {
			// Its messages taken in by another relay cannot come here.
			deliver, _ = f.LastError()
		}
	}
	return pickup, deliver
}

// DefaultAckWait is Options.AckWait when unset: also how long a message
// in flight in a relay that crashed waits before it is offered again.
const DefaultAckWait = 30 * time.Second

// New wires the pipeline for every node this relay serves. It starts nothing.
func New(cfg *config.Config, b *bus.Bus, eps Endpoints, log *slog.Logger, opts Options) (*Pipeline, error) {
	if opts.AckWait == 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.MaxRetryDelay == 0 {
		opts.MaxRetryDelay = 5 * time.Minute
	}
	if opts.FetchAckWait == 0 {
		opts.FetchAckWait = time.Minute
	}
	if opts.Limits == (exchange.Limits{}) {
		opts.Limits = cfg.Limits()
	}
	p := &Pipeline{
		cfg: cfg, b: b, eps: eps, log: log, opts: opts,
		states: NewStates(b.Channels),
		dead:   &Dead{b: b},
		mem:    NewMemory(b.Taken),
		health: map[string]*endpoints{},

		delivers: map[string]message.Publisher{},
	}
	p.metrics = newMetrics(p)
	if b.Shared() {
		p.leases = &leases{kv: b.Leases, owner: instanceName(cfg), ttl: cfg.Relay.LeaseTTL.Std(), log: log}
	}
	wlog := watermill.NewSlogLoggerWithLevelMapping(log.With("component", "watermill"), map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug,
	})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, wlog)
	if err != nil {
		return nil, err
	}
	router.AddMiddleware(middleware.Recoverer)
	p.router = router

	if err := p.wire(wlog); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// lane is what one node's ingest or delivery handler works with: the bus on
// a connection of its own, so nodes do not queue behind each other's
// requests on one connection.
type lane struct {
	m      *metrics
	b      *bus.Bus
	states *States
	dead   *Dead
	log    *slog.Logger
	opts   Options
	// dropper deletes finished payloads behind a delivery; nil: inline.
	dropper *dropper
	// payloads is the pipeline's: by-name payloads' ingest and finish.
	payloads *payloadLocks
}

// drop deletes a finished message's payload.
func (l *lane) drop(obj string) {
	if l.dropper != nil {
		l.dropper.drop(obj)
		return
	}
	deletePayload(l.b.DeletePayload, obj, l.log)
}

// newLane opens a lane named for logs and NATS monitoring.
func (p *Pipeline) newLane(name string, wlog watermill.LoggerAdapter) (*lane, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lb, err := p.b.Lane(ctx, name)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() error { lb.CloseLane(); return nil })
	return p.laneOn(lb, p.log), nil
}

// laneOn is a lane working through lb (a bus.Lane), without a publisher.
func (p *Pipeline) laneOn(lb *bus.Bus, log *slog.Logger) *lane {
	return &lane{m: p.metrics, b: lb, states: p.states.on(lb.Channels), dead: &Dead{b: lb}, log: log, opts: p.opts, payloads: &p.payloads}
}

// wire adds the handlers of every served node to the router.
func (p *Pipeline) wire(wlog watermill.LoggerAdapter) error {
	cfg, eps, router := p.cfg, p.eps, p.router
	var err error
	if p.pushLane, err = p.newLane("push", wlog); err != nil {
		return err
	}
	for _, name := range cfg.NodeNames() {
		n := cfg.Nodes[name]
		if n == nil || !cfg.Serves(n) {
			continue
		}
		// The adapters name their node in their own logs: they get p.log.
		nlog := p.log.With("node", name)
		h := &endpoints{}
		p.health[name] = h
		if n.Pickup != nil {
			sub, err := eps.Pickup(name, n.Pickup, p.mem, p.log)
			if err != nil {
				return fmt.Errorf("nodes.%s.pickup: %w", name, err)
			}
			if p.leases != nil {
				// Replicas share the cluster: this one runs the pickup
				// only while it holds the node's lease, each term with
				// an adapter of its own.
				_ = sub.Close()
				sub = newLeasedPickup(p.leases, "pickup."+bus.Token(name), func() (message.Subscriber, error) {
					return eps.Pickup(name, n.Pickup, p.mem, p.log)
				}, nlog)
			}
			p.closers = append(p.closers, sub.Close)
			h.pickup, _ = sub.(errorReporter)
			l, err := p.newLane("ingest "+name, wlog)
			if err != nil {
				return err
			}
			router.AddConsumerHandler("ingest "+name, name, sub, p.ingestHandler(name, n.Pickup.Kind, l))
			p.handlers++
		}
		if n.Deliver != nil {
			pub, err := eps.Deliver(name, n.Deliver, p.log)
			if err != nil {
				return fmt.Errorf("nodes.%s.deliver: %w", name, err)
			}
			p.closers = append(p.closers, pub.Close)
			if ps, ok := pub.(pollSharer); ok && p.leases != nil {
				ps.Share(p.leases.pulls(name))
			}
			if ss, ok := pub.(superseder); ok && n.Mode == config.ModeLatest {
				ss.Supersede(p.laneOn(p.b, nlog).superseded)
			}
			p.delivers[name] = pub
			in := &inflight{}
			subs, closeSub, err := p.deliverySubscribers(name, deliveryWorkers, in)
			if err != nil {
				return err
			}
			p.closers = append(p.closers, closeSub)
			h.deliver, _ = pub.(errorReporter)
			l, err := p.newLane("deliver "+name, wlog)
			if err != nil {
				return err
			}
			// Closed before the lane's connection (closers run newest first).
			l.dropper = newDropper(l.b.DeletePayload, l.log)
			p.closers = append(p.closers, l.dropper.close)
			handle := p.deliverHandler(name, n, pub, l, in)
			for i, sub := range subs {
				router.AddConsumerHandler(fmt.Sprintf("deliver %s #%d", name, i+1), name, sub, handle)
				p.handlers++
			}
		}
	}
	return p.wireFetches()
}

// instanceName names this relay process among replicas of the same id:
// the host (a pod's name on Kubernetes) and the API address, stable across
// a restart in place and different between replicas.
func instanceName(cfg *config.Config) string {
	host, _ := os.Hostname()
	return cfg.Relay.ID + "@" + host + "/" + cfg.Relay.Listen
}

// Run runs the handlers until ctx ends, then closes everything.
func (p *Pipeline) Run(ctx context.Context) error {
	// The router's Running never closes when Run fails before it runs (a
	// consumer it cannot create): the watcher ends with Run too, and Run
	// waits for it, so that it cannot mark a stopped pipeline started.
	routerDone, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-p.router.Running():
			p.started.Store(true)
			p.log.Info("pipeline running", "handlers", p.handlers)
		case <-routerDone:
		}
	}()
	// Bounded: a stream that does not answer must not hold the start up.
	cctx, cancel := context.WithTimeout(ctx, countUncountedWithin)
	p.countUncounted(cctx)
	cancel()
	fctx, stopFetches := context.WithCancel(ctx)
	fetchDone := p.runFetches(fctx)
	err := p.router.Run(ctx)
	close(routerDone)
	<-watched
	stopFetches()
	<-fetchDone
	p.unrecorded.releaseAll()
	p.started.Store(false)
	p.close()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// countUncountedWithin bounds countUncounted at the start.
const countUncountedWithin = 30 * time.Second

// close releases what New opened, newest first.
func (p *Pipeline) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		if cerr := p.closers[i](); cerr != nil {
			p.log.Warn("close", "err", cerr)
		}
	}
	p.closers = nil
}

// Ready reports whether every handler has started (for /readyz).
func (p *Pipeline) Ready() bool { return p.started.Load() }

// DeliverPublisher is the delivery adapter of a node this relay serves, nil
// for others.
func (p *Pipeline) DeliverPublisher(node string) message.Publisher { return p.delivers[node] }

// Push takes a message handed in through the API (POST /api/v1/messages)
// into JetStream exactly as a pickup of its sender would: a nil error
// means it was taken, and the Outcome says how (queued, stored before,
// dropped as stale, dead-lettered for a route problem); an error means it
// was not taken.
func (p *Pipeline) Push(ctx context.Context, m *message.Message) (Outcome, error) {
	if !p.started.Load() {
		return Outcome{}, errors.New("pipeline not running")
	}
	from := m.Metadata.Get(exchange.MetaFrom)
	if n := p.cfg.Nodes[from]; n == nil {
		return Outcome{}, fmt.Errorf("push: unknown node %q", from)
	}
	exchange.Rebase(m, ctx)
	return p.ingest(from, "api", p.pushLane, m)
}

// States gives read access to channel state.
func (p *Pipeline) States() *States { return p.states }

// Dead gives access to dead letters.
func (p *Pipeline) Dead() *Dead { return p.dead }
