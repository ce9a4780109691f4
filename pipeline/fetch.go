package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// fetch moves the records addressed to one node this relay serves from
// another relay's JetStream domain into this relay's own: an office relay
// fetches what the head office picked up for its nodes, the head office
// fetches what the office picked up for the head office's nodes. A relay
// only ever writes to its own domain; it reads another's through the
// JetStream API ($JS.<relay id>.API), which is all that crosses a leaf
// connection (bus.LeafDeny). While the other domain cannot be reached the
// records wait there, stored, and move when it can.
//
// One record at a time, in stream order: copy the payload, publish the
// record here (its Nats-Msg-Id drops a second copy after a crash), drop the
// payload there, ack there.
type fetch struct {
	p     *Pipeline
	relay string // the other relay's id: its JetStream domain
	node  string
	log   *slog.Logger

	// trouble is why the last session ended, until one reaches the other
	// relay again: `relay status` shows it as the node's delivery error
	// (its messages wait at the other relay), where the log says it once.
	mu        sync.Mutex
	trouble   string
	troubleAt time.Time
}

// setTrouble records why a session ended (nil: it reached the other relay).
func (f *fetch) setTrouble(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		f.trouble, f.troubleAt = "", time.Time{}
		return
	}
	f.trouble = "fetch from relay " + f.relay + ": " + strings.TrimPrefix(err.Error(), "relay "+f.relay+": ")
	f.troubleAt = time.Now()
}

// LastError is why the fetch does not run, "" while it does.
func (f *fetch) LastError() (string, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.trouble, f.troubleAt
}

// fetchConsumer is the durable consumer, in the EXCHANGE stream of relay
// (the other relay's JetStream domain), of the records for node: named for
// that domain, as bus.ConsumerName says why.
func fetchConsumer(node, relay string) string { return bus.ConsumerFor("fetch", node, relay) }

// wireFetches plans a fetch for every node this relay serves by name
// (nodes.X.relay is its id) from every other relay routing.yaml names.
func (p *Pipeline) wireFetches() error {
	others := map[string]bool{}
	for _, n := range p.cfg.Nodes {
		if n != nil && n.Relay != "" && n.Relay != p.cfg.Relay.ID {
			others[n.Relay] = true
		}
	}
	if len(others) == 0 {
		return nil
	}
	relays := make([]string, 0, len(others))
	for r := range others {
		relays = append(relays, r)
	}
	sort.Strings(relays)
	var unassigned []string
	for _, name := range p.cfg.NodeNames() {
		if n := p.cfg.Nodes[name]; n != nil && n.Relay == "" {
			unassigned = append(unassigned, name)
		}
	}
	if len(unassigned) > 0 {
		p.log.Warn("nodes without `relay` are served by every relay, here and at "+strings.Join(relays, ", ")+": give each its relay", "nodes", strings.Join(unassigned, ", "))
	}
	if !p.b.Linked() {
		p.log.Warn("routing.yaml names other relays, but this one runs a standalone embedded NATS: messages to and from their nodes wait here until nats.leaf or nats.url connects it", "relays", strings.Join(relays, ", "))
		return nil
	}
	if p.b.Shared() {
		// Other relays reach this one's streams by JetStream domain = relay id.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		info, err := p.b.JS.AccountInfo(ctx)
		if err != nil {
			return fmt.Errorf("nats: account info: %w", err)
		}
		if info.Domain != p.cfg.Relay.ID {
			return fmt.Errorf("the NATS cluster's JetStream domain is %q, but relays %s find this relay's messages in domain %q (its relay.id): set `jetstream { domain: %s }` on every server of the cluster",
				info.Domain, strings.Join(relays, ", "), p.cfg.Relay.ID, p.cfg.Relay.ID)
		}
	}
	p.handovers = p.wireHandovers()
	for _, name := range p.cfg.NodeNames() {
		n := p.cfg.Nodes[name]
		if n == nil || n.Relay != p.cfg.Relay.ID || n.Deliver == nil {
			continue
		}
		for _, r := range relays {
			p.fetches = append(p.fetches, &fetch{p: p, relay: r, node: name, log: p.log.With("node", name, "from_relay", r)})
		}
	}
	return nil
}

// runFetches starts every fetch and handover watch; the channel closes
// when all have ended with ctx.
func (p *Pipeline) runFetches(ctx context.Context) <-chan struct{} {
	var wg sync.WaitGroup
	for _, f := range p.fetches {
		wg.Go(func() { f.run(ctx) })
	}
	for _, h := range p.handovers {
		wg.Go(func() { h.run(ctx) })
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	return done
}

// fetchRetryMax caps the wait between attempts to reach the other domain.
const fetchRetryMax = 10 * time.Second

// run keeps a fetch session going until ctx ends, waiting longer after each
// failure (up to fetchRetryMax) and starting over once a session worked.
func (f *fetch) run(ctx context.Context) {
	wait := time.Second
	for failures := 0; ctx.Err() == nil; failures++ {
		worked, err := f.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errFetchLeaseEnded) {
			f.setTrouble(nil)
			f.log.Info(err.Error(), "relay", f.relay)
			wait, failures = time.Second, 0
			continue
		}
		f.setTrouble(err)
		if worked {
			wait, failures = time.Second, 0
		}
		// An office may be unreachable for days: say so once, then quietly.
		level := slog.LevelWarn
		if failures > 0 {
			level = slog.LevelDebug
		}
		f.log.Log(ctx, level, "fetch from relay "+f.relay+" interrupted; will retry", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, fetchRetryMax)
	}
}

// errFetchLeaseEnded ends a session whose fetch lease was lost or taken by
// another replica: no trouble of the link's.
var errFetchLeaseEnded = errors.New("fetch lease ended: another replica may fetch")

// session fetches until an error; worked says it reached the other domain.
func (f *fetch) session(ctx context.Context) (worked bool, err error) {
	p := f.p
	if p.leases != nil {
		// Another replica holding the lease for a whole TTL fetches: what
		// went wrong here before is not the node's trouble then.
		stale := time.AfterFunc(p.leases.ttl, func() { f.setTrouble(nil) })
		held, herr := p.leases.hold(ctx, "fetch."+bus.Token(f.relay)+"."+bus.Token(f.node))
		stale.Stop()
		if herr != nil {
			return false, herr
		}
		defer held.Release()
		parent := ctx
		ctx = held.Context()
		defer func() { // err is the session's result
			if err != nil && parent.Err() == nil && ctx.Err() != nil {
				err = errFetchLeaseEnded
			}
		}()
	}
	lb, err := p.b.Lane(ctx, "fetch "+f.node+" from "+f.relay)
	if err != nil {
		return false, err
	}
	defer lb.CloseLane()
	l := p.laneOn(lb, f.log)
	remote, err := bus.Remote(ctx, lb.Conn, f.relay)
	if err != nil {
		return false, err
	}
	cons, err := f.consumer(ctx, remote)
	if err != nil {
		return false, fmt.Errorf("relay %s: consumer %s: %w", f.relay, fetchConsumer(f.node, f.relay), err)
	}
	f.setTrouble(nil)
	f.log.Info("fetching from relay " + f.relay)
	for ctx.Err() == nil {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return true, fmt.Errorf("relay %s: fetch: %w", f.relay, err)
		}
		for msg := range batch.Messages() {
			if err := f.copy(ctx, l, remote, msg); err != nil {
				_ = msg.Nak()
				return true, err
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return true, fmt.Errorf("relay %s: fetch: %w", f.relay, err)
		}
	}
	return true, ctx.Err()
}

// copy takes one record (and its payload) into this relay's domain.
func (f *fetch) copy(ctx context.Context, l *lane, remote *bus.Bus, msg jetstream.Msg) error {
	hdr := msg.Headers()
	obj := hdr.Get(exchange.MetaObject)
	id := hdr.Get("_watermill_message_uuid")
	stop := progress(msg, f.p.opts.FetchAckWait/3)
	defer stop()

	h, herr := headerOf(hdr)
	// Where the record stands in the other relay's stream: what tells one
	// taken in here before from a new one.
	var remoteSeq uint64
	if meta, err := msg.Metadata(); err == nil {
		remoteSeq = meta.Sequence.Stream
	}
	from := f.relay + "@" + remote.Exchange.CachedInfo().Created.UTC().Format(time.RFC3339Nano)
	fetched := func(c *Channel) {
		if c.FetchedFrom != from {
			c.FetchedFrom, c.FetchedSeq = from, 0
		}
		c.FetchedSeq = max(c.FetchedSeq, remoteSeq)
	}
	payload := obj != ""
	if herr == nil {
		st, err := l.states.Get(ctx, h.ExchangePlan, h.From, h.To)
		if err != nil {
			return err
		}
		if st.FetchedFrom != from {
			// Counted in another stream (made anew since, or another
			// relay's), or in none yet: it tells nothing of this one
			// (found by review of the check below: an office installed
			// anew would have had its first records taken for old ones,
			// acked and lost).
			st.FetchedSeq = 0
		}
		if remoteSeq > 0 && remoteSeq <= st.FetchedSeq {
			// Taken in here before, one record at a time in the other
			// relay's stream order: its ack was lost (a kill, the link)
			// or the other relay's consumer was made anew. Its payload
			// may be gone from both places since (delivered, or a dead
			// letter here): no reason for a dead letter (found by
			// review: a message routed by name, delivered, was one).
			f.log.Info("fetched again; taken in here before, nothing to do", "message_id", id, "channel", channelName(h), "message_no", h.MessageNo)
			f.dropRemote(ctx, remote, obj)
			return msg.DoubleAck(ctx)
		}
		if !h.ByName() && h.MessageNo <= st.DeliveredNo || h.ByName() && id != "" && id == st.LastMsgID {
			if h.ByName() || st.FetchedSeq == 0 {
				// Delivered here (a state from before fetched_seq was
				// kept cannot tell more): copying its payload again
				// would leave a copy nothing refers to.
				f.log.Info("fetched again after its delivery; nothing to do", "message_id", id, "channel", channelName(h), "message_no", h.MessageNo)
				f.dropRemote(ctx, remote, obj)
				return msg.DoubleAck(ctx)
			}
			// Newer in the other relay's stream than every record
			// counted here, its number delivered: an older message
			// queued there after a newer one (a retried dead letter,
			// relay send), or one published here by a relay killed
			// before its count. Its record goes in without its payload:
			// the stream's duplicate window tells the second (counted
			// once), the delivery drops the first as stale, counted and
			// traced (found by review: a message delivered once was
			// counted a duplicate as well).
			payload = false
		}
	}
	gone, damaged := false, error(nil)
	if payload {
		var err error
		gone, err = f.copyPayload(ctx, l, remote, obj, statedSize(hdr.Get(exchange.MetaSize)))
		switch {
		case exchange.IsPermanent(err):
			// Damaged at the other relay: no later session reads it
			// better, and with one record out at a time every record
			// after it waited for good (found by review).
			damaged = err
		case err != nil:
			return err
		}
	}
	// A record that cannot be delivered stays here as a dead letter (with
	// its payload, when there is one) rather than going into the stream.
	if gone || damaged != nil || herr != nil {
		dl := DeadLetter{Node: f.node, Stage: StageDeliver, MsgID: id, FileName: hdr.Get(exchange.MetaFileName)}
		if remoteSeq > 0 {
			// One letter for the record, also when the relay stopped
			// before its ack and it is offered again (found by review:
			// two letters, one payload).
			dl.dedupID = fmt.Sprintf("%s@%s:%d", id, f.relay, remoteSeq)
		}
		switch {
		case gone:
			dl.Reason = fmt.Sprintf("payload %s is gone from relay %s", obj, f.relay)
		case damaged != nil:
			dl.Reason = fmt.Sprintf("payload %s is damaged at relay %s: %v", obj, f.relay, damaged)
		default:
			dl.Reason = fmt.Sprintf("unreadable record from relay %s: %v", f.relay, herr)
			dl.Object, dl.Size, dl.SHA256 = obj, atoi64(hdr.Get(exchange.MetaSize)), hdr.Get(exchange.MetaSHA256)
		}
		if herr == nil {
			dl.Header = &h
		}
		f.log.Error("dead letter", "message_id", id, "reason", dl.Reason)
		if err := l.dead.put(ctx, dl); err != nil {
			return err
		}
		l.m.dead.WithLabelValues(f.node, StageDeliver).Inc()
		if herr == nil && !f.resolved(ctx, l, h, id) {
			// Taken in here and resolved as a dead letter, like one that
			// dies at delivery: a sequential channel's next number waits
			// behind it as a dead letter, not as a gap. One write, with
			// fetched_seq: a kill between two left it counted as taken
			// and never resolved.
			now := l.states.now()
			if err := l.finish(ctx, h, 0, id, "", func(c *Channel) {
				c.Queued++
				c.PickedNo = max(c.PickedNo, h.MessageNo)
				c.LastPickupAt = now
				fetched(c)
				l.diedAtDelivery(c, h, f.p.cfg.Nodes[f.node].Mode, dl.Reason)
			}); err != nil {
				return err
			}
		}
		f.dropRemote(ctx, remote, obj)
		return msg.DoubleAck(ctx)
	}
	rec := nats.NewMsg(msg.Subject())
	for k, v := range hdr {
		if !strings.HasPrefix(k, "Nats-Expected-") {
			rec.Header[k] = v
		}
	}
	rec.Data = msg.Data()
	ack, err := l.b.JS.PublishMsg(ctx, rec, jetstream.WithExpectStream(bus.StreamExchange))
	if err != nil {
		return fmt.Errorf("fetch %s: publish here: %w", id, err)
	}
	if ack.Duplicate {
		// Published before the relay stopped, its count maybe not:
		// counted if its number is new to the channel, as a pickup's
		// record taken again is (found by review: one waiting fewer).
		l.taken(ctx, h, l.states.now(), false, ack.Sequence, fetched)
	} else {
		l.taken(ctx, h, l.states.now(), true, ack.Sequence, fetched)
		l.event(Event{Step: StepFetched, MsgID: id, File: hdr.Get(exchange.MetaFileName), Node: f.node, Channel: channelName(h), No: h.MessageNo,
			Size: atoi64(hdr.Get(exchange.MetaSize)), Detail: "from relay " + f.relay})
		l.m.fetched.WithLabelValues(f.node, f.relay).Inc()
		f.log.Info("fetched", "message_id", id, "channel", channelName(h), "message_no", h.MessageNo)
	}
	f.dropRemote(ctx, remote, obj)
	return msg.DoubleAck(ctx)
}

// resolved says the channel's last resolved record is the message id: a
// dead letter made before the relay stopped, offered again.
func (f *fetch) resolved(ctx context.Context, l *lane, h exchange.Header, id string) bool {
	st, err := l.states.Get(ctx, h.ExchangePlan, h.From, h.To)
	return err == nil && id != "" && st.LastMsgID == id
}

// consumer is the durable consumer at the other relay that f reads its
// node's records with.
func (f *fetch) consumer(ctx context.Context, remote *bus.Bus) (jetstream.Consumer, error) {
	return bus.EnsureConsumer(ctx, remote.JS, bus.StreamExchange, jetstream.ConsumerConfig{
		Durable:       fetchConsumer(f.node, f.relay),
		Description:   "relay " + f.p.cfg.Relay.ID + " fetches the messages for node " + f.node,
		FilterSubject: bus.DeliverSubjects(f.node),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       f.p.opts.FetchAckWait,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// One record at a time, in stream order: with more out, a session
		// cut short (a kill, the link, a lost lease) leaves records
		// unacked that the next session gets only after AckWait, after
		// the later ones — a sequential channel would see its newer
		// numbers first and the older ones as stale.
		MaxAckPending: 1,
	}, bus.LegacyConsumerFor("fetch", f.node))
}

// dropRemote removes the other relay's copy of a payload now held here.
func (f *fetch) dropRemote(ctx context.Context, remote *bus.Bus, obj string) {
	if obj == "" {
		return
	}
	if err := remote.DeletePayload(ctx, obj); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		f.log.Warn("payload not dropped at relay "+f.relay, "object", obj, "err", err)
	}
}

// copyPayload copies the object (of about size bytes) from the other
// domain; gone says it is in neither (a copy here counts: an earlier
// attempt copied it and dropped the original, then stopped before its ack).
// Object names are never reused for other content, as PutPayload needs.
func (f *fetch) copyPayload(ctx context.Context, l *lane, remote *bus.Bus, obj string, size int64) (gone bool, err error) {
	rc, err := remote.OpenPayload(ctx, obj)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		if _, lerr := l.b.Payloads.GetInfo(ctx, obj); lerr == nil {
			return false, nil
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("relay %s: %w", f.relay, err)
	}
	defer rc.Close()
	if _, _, err := l.b.PutPayload(ctx, obj, size, rc); err != nil {
		return false, fmt.Errorf("fetch: store payload %s here: %w", obj, err)
	}
	return false, nil
}

// headerOf reads the exchange header a record carries in its NATS headers.
func headerOf(hdr nats.Header) (exchange.Header, error) {
	m := message.NewMessage("", nil)
	for k := range hdr {
		m.Metadata.Set(k, hdr.Get(k))
	}
	return exchange.HeaderOf(m)
}

// progress tells JetStream every period that msg is still being worked on,
// until stop is called.
func progress(msg jetstream.Msg, period time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}
