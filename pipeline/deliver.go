package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// inflightKey is the metadata key under which the delivery subscriber leaves
// a handle to the JetStream message, so a long delivery can say "in progress".
const inflightKey = "_relay_inflight"

// inflight holds the JetStream messages being handled, by handle, and the
// failed attempts of the node's messages that are failing.
type inflight struct {
	msgs sync.Map
	seq  atomic.Uint64

	mu    sync.Mutex
	fails map[string]int // by message id, until it is resolved
	// held is why each message waits for its node to read the file
	// there, as last told, until it is resolved.
	held map[string]string
}

// stashUnmarshaler is Watermill's default unmarshaler plus the in-flight handle.
type stashUnmarshaler struct{ in *inflight }

func (u stashUnmarshaler) Unmarshal(msg jetstream.Msg) (*message.Message, error) {
	wm, err := wmjs.DefaultUnmarshaler{}.Unmarshal(msg)
	if err != nil {
		// Hand over an empty message that the handler dead-letters, rather
		// than one JetStream would offer again forever.
		wm = message.NewMessage("", nil)
		wm.Metadata.Set(exchange.MetaProblem, "unreadable record: "+err.Error())
	}
	tok := strconv.FormatUint(u.in.seq.Add(1), 10)
	u.in.msgs.Store(tok, msg)
	wm.Metadata.Set(inflightKey, tok)
	delete(wm.Metadata, nakDelayKey) // the handler's to say, not the record's
	return wm, nil
}

// holdDelay is how soon a held message (waiting for its predecessor,
// another replica, the node) is looked at again: it is not failing, and
// must follow soon after what it waits for.
const holdDelay = time.Second

// maxHoldDelay bounds how far apart a message held for long (behind a gap
// or a dead letter for hours: every look costs a handler run) is looked
// at: from a second at first, a second more per minute held, up to this.
const maxHoldDelay = 30 * time.Second

// heldFor is the delay before a message offered n times (all holds but
// a few failures) is looked at again.
func heldFor(n uint64) time.Duration {
	return min(holdDelay*time.Duration(1+n/60), maxHoldDelay)
}

// maxHeld is how many of a node's messages may wait for their ack at once:
// every held message does (a hold is a delayed nak), and at the limit
// JetStream offers the node nothing new — not the number a gap waits for,
// nor another channel's message. Thousands may wait behind a dead letter
// on a sequential channel before someone retries or drops it.
const maxHeld = 20000

// maxFailing bounds how many failing messages a node's failure counts
// remember (one resolved by another replica is never forgotten here); past
// it they start again from one.
const maxFailing = 4096

// failed counts a failed attempt of message id and returns how long it
// waits before the next: 1s, 2s, 4s, ... up to max, by its own failures.
func (in *inflight) failed(id string, max time.Duration) time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.fails == nil || len(in.fails) >= maxFailing {
		in.fails = map[string]int{}
	}
	in.fails[id]++
	n := min(in.fails[id], 21)
	return min(time.Second<<(n-1), max)
}

// retryAfter counts a failed attempt of message id (err) and returns how
// long it waits before the next; an attempt that got part of the file
// through (exchange.Progressed) starts its waits again from the shortest.
func (in *inflight) retryAfter(id string, err error, max time.Duration) time.Duration {
	if exchange.HasProgressed(err) {
		in.resolved(id)
	}
	return in.failed(id, max)
}

// resolved forgets the failures of message id, and why it was held.
func (in *inflight) resolved(id string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.fails, id)
	delete(in.held, id)
}

// heldAnew records that message id is held for why and says whether that
// is news: its first hold, or another reason than the last.
func (in *inflight) heldAnew(id, why string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.held == nil || len(in.held) >= maxHeld {
		in.held = map[string]string{}
	}
	if in.held[id] == why {
		return false
	}
	in.held[id] = why
	return true
}

// deliverySubscribers makes workers subscriptions to the node's durable
// consumer, sharing one connection of their own. Each worker handles one
// message at a time; a channel's messages never run side by side (see
// channelLocks), and JetStream offers a message again if the relay dies
// before acking it.
func (p *Pipeline) deliverySubscribers(node string, workers int, in *inflight) ([]message.Subscriber, func() error, error) {
	nc, err := p.b.NewConn("deliver " + node)
	if err != nil {
		return nil, nil, err
	}
	var subs []message.Subscriber
	for range workers {
		sub, err := p.deliverySubscriber(node, nc, in)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		subs = append(subs, sub)
	}
	return subs, func() error { nc.Close(); return nil }, nil
}

// deliverySubscriber is one worker's subscription to the node's durable
// consumer (see consumerSubscriber: it closes without racing its callbacks
// and leaves the shared connection to deliverySubscribers' closer).
func (p *Pipeline) deliverySubscriber(node string, nc *nats.Conn, in *inflight) (message.Subscriber, error) {
	sub, err := newConsumerSubscriber(consumerSubscriberConfig{
		Conn:   nc,
		Stream: bus.StreamExchange,
		Consumer: jetstream.ConsumerConfig{
			Durable:       bus.ConsumerName(p.cfg.Relay.ID, node),
			Description:   "delivery to node " + node,
			FilterSubject: bus.DeliverSubjects(node),
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       p.opts.AckWait, // offered again if no ack or progress (keepAlive) by then: covers a crash
			MaxDeliver:    -1,
			// Many may be outstanding so held messages (a gap, a dead
			// letter in sequential mode) do not block the node's other
			// channels or what the gap waits for; the handler still runs
			// one at a time per channel and the channel state decides
			// what is delivered, so order is kept.
			MaxAckPending: maxHeld,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		},
		Legacy:      bus.LegacyConsumerFor("deliver", node),
		Bound:       func(c jetstream.Consumer) { p.offeredUpTo.Store(node, bus.OfferedUpTo(c.CachedInfo())) },
		PullOptions: deliveryPullOpts(),
		Unmarshaler: stashUnmarshaler{in: in},
		Logger:      p.router.Logger(),
	})
	if err != nil {
		return nil, fmt.Errorf("delivery subscriber %s: %w", node, err)
	}
	return sub, nil
}

// deliveryPullOpts take a node's records one at a time: a prefetched
// message's AckWait would run out while a long delivery is in progress. Pull
// requests last 10s (heartbeat 5s) rather than 30s: after a NATS outage the
// first pull may be lost, and a missed heartbeat (2 × 5s) renews it.
func deliveryPullOpts() []jetstream.PullMessagesOpt {
	return []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(1), jetstream.PullExpiry(10 * time.Second)}
}

// keepAlive tells JetStream the message is still being worked on until the
// returned stop is called, and forgets the in-flight handle.
func (p *Pipeline) keepAlive(in *inflight, m *message.Message) (stop func()) {
	tok := m.Metadata.Get(inflightKey)
	v, ok := in.msgs.Load(tok)
	if !ok {
		return func() {}
	}
	halt := progress(v.(jetstream.Msg), p.opts.AckWait/3)
	return func() {
		halt()
		in.msgs.Delete(tok)
	}
}

// deliverHandler delivers one record to the node's adapter. nil acks it
// (delivered, or dropped for a counted reason, or dead-lettered) unless it
// was held; an error nacks it and JetStream offers it again after a
// backoff that grows with the message's failures.
func (p *Pipeline) deliverHandler(node string, n *config.Node, pub message.Publisher, l *lane, in *inflight) message.NoPublishHandlerFunc {
	deliver := p.deliverOne(node, n, pub, l, in)
	return func(m *message.Message) error {
		err := deliver(m)
		switch {
		case err != nil:
			setNakDelay(m, in.retryAfter(m.UUID, err, p.opts.MaxRetryDelay))
		case m.Metadata.Get(nakDelayKey) == "": // not held: resolved
			in.resolved(m.UUID)
		}
		return err
	}
}

// deliverOne is deliverHandler's attempt at one record.
func (p *Pipeline) deliverOne(node string, n *config.Node, pub message.Publisher, l *lane, in *inflight) message.NoPublishHandlerFunc {
	return func(m *message.Message) error {
		stop := p.keepAlive(in, m)
		defer stop()
		ctx := m.Context()
		log := p.log.With("node", node, "message_id", m.UUID, "file", m.Metadata.Get(exchange.MetaFileName))

		h, herr := exchange.HeaderOf(m)
		if problem := m.Metadata.Get(exchange.MetaProblem); problem != "" || herr != nil {
			if problem == "" {
				problem = herr.Error()
			}
			log.Error("dead letter: unreadable record", "reason", problem)
			// Its stream sequence names the letter: the record offered
			// again after a lost ack makes no second one (found by
			// review).
			if err := l.dead.put(ctx, DeadLetter{Node: node, Stage: StageDeliver, Reason: problem, MsgID: m.UUID, StreamSeq: streamSeq(in, m)}); err != nil {
				return err
			}
			l.m.dead.WithLabelValues(node, StageDeliver).Inc()
			return nil
		}
		log = log.With("channel", channelName(h), "message_no", h.MessageNo)
		ev := func(step, detail string) {
			l.event(Event{Step: step, MsgID: m.UUID, File: m.Metadata.Get(exchange.MetaFileName), Node: node, Channel: channelName(h), No: h.MessageNo, Detail: detail})
		}
		// hold gives the message back to be looked at again after
		// holdDelay: it waits (for its predecessor, another replica, the
		// node), it is not failing. Nacked here rather than by returning an
		// error: the router would log every hold, once a second, as a
		// handler failure.
		hold := func() error {
			setNakDelay(m, heldFor(timesOffered(in, m)))
			m.Nack()
			return nil
		}
		// holdTold holds the message and tells why: in the channel's
		// state and the log, once a minute while it stays the same (a
		// message held for long is looked at again and again).
		holdTold := func(why string) error {
			if l.states.setError(ctx, h.ExchangePlan, h.From, h.To, why) {
				level := slog.LevelWarn
				if waitsForRead(why) {
					level = slog.LevelInfo // the node's pace
				}
				log.Log(ctx, level, why)
			} else {
				log.Debug(why)
			}
			return hold()
		}
		obj := m.Metadata.Get(exchange.MetaObject)
		key := bus.ChannelKey(h.ExchangePlan, h.From, h.To)
		unlock, ok := p.chanLocks.lock(ctx, key, lockWait)
		if !ok {
			// The channel's previous message is still being delivered
			// (a big file, a slow destination): give this worker to the
			// node's other channels and look again soon.
			log.Debug("the channel's previous message is still being delivered; waiting")
			return hold()
		}
		defer unlock()

		if p.leases != nil {
			// Replicas share the node's consumer: a channel's messages
			// must still be written one after another, or an older one
			// could land over a newer one. The claim ends the delivery if
			// it cannot be renewed.
			claim := p.unrecorded.claimed(key)
			if claim == nil {
				// Its own life: it may outlive this message (below).
				var err error
				claim, err = p.leases.try(context.WithoutCancel(ctx), "channel."+key)
				if errors.Is(err, errLeaseHeld) {
					log.Debug("another replica is delivering on this channel; waiting")
					return hold()
				}
				if err != nil {
					return err
				}
			}
			// Kept while an outcome of the channel is unrecorded: the
			// others judge by the bucket, which does not have it yet
			// (found by review: another replica wrote No 5 after this
			// one's No 6, then No 6 again).
			defer p.unrecorded.release(key, claim)
			// The delivery ends with the message or the claim.
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
			defer context.AfterFunc(claim.Context(), cancel)()
		}

		seq := streamSeq(in, m)
		// An outcome the destination has but the channel's state does
		// not (its write failed) is written first: this record may be
		// it, and the channel's next message is judged by it.
		if mine, err := l.recordUnrecorded(ctx, &p.unrecorded, key, seq, m.UUID); err != nil {
			return err
		} else if mine {
			log.Info("resolved before, its channel state written now; acked")
			return nil
		}

		// On an embedded NATS this process alone writes the channel
		// states, so the newest it read or wrote is the bucket's (a write
		// it lost track of only lags, and the update below re-reads).
		// Replicas on a shared NATS must read the bucket.
		get := l.states.Get
		if p.leases == nil {
			get = l.states.Recent
		}
		st, err := get(ctx, h.ExchangePlan, h.From, h.To)
		if err != nil {
			return err
		}
		// gapTold holds a message behind a gap (or a dead letter): each
		// held number tells its hold once; then only the one whose words
		// the channel shows keeps them fresh, and a channel that shows
		// no gap is told again (found by review: the held numbers wrote
		// their words over each other's at every look, a warning and a
		// state write each).
		gapTold := func(why string) error {
			if in.heldAnew(m.UUID, why) || st.LastError == why || !st.HeldOnGap() {
				return holdTold(why)
			}
			log.Debug(why)
			return hold()
		}
		if timesOffered(in, m) > 1 && (seq > 0 && slices.Contains(st.RecentSeqs, seq) || seq == 0 && m.UUID != "" && m.UUID == st.LastMsgID) {
			// Resolved already, its ack lost (the relay stopped before
			// it, or its AckWait passed), whatever the outcome was. By
			// the record's stream sequence: the same message queued
			// again (relay send, a re-pickup past the duplicate window)
			// is a record of its own (found by review: one was acked
			// undelivered behind a dead letter of the same id). A first
			// offer is never taken for one (a stream made anew under
			// kept channel states counts from 1 again); one from a
			// consumer that took an older one over (bus.EnsureConsumer)
			// is judged by its number, and finish counts it once.
			log.Info("offered again after it was resolved; acked")
			return nil
		}
		// Offered anew by a consumer that took an older one over, and
		// resolved by the old one: acked uncounted (found by review:
		// counted again).
		offeredBefore := p.offeredBefore(node, in, m, seq)
		resolvedBefore := func() error {
			log.Info("offered again by a consumer that took an older one over; resolved before: acked")
			return nil
		}
		if offeredBefore && slices.Contains(st.RecentSeqs, seq) {
			// Whatever the outcome (superseded, dead).
			return resolvedBefore()
		}
		// A message routed by its file name has no number: its place in
		// the channel is its place in the stream.
		if h.ByName() && seq > 0 {
			switch o, err := l.nameOrder(ctx, h, n.Mode, seq, st.NameSeq); {
			case err != nil:
				return err
			case o == orderStale && offeredBefore:
				return resolvedBefore()
			case o == orderStale:
				log.Info("dropped: a message queued after it on the channel was resolved already")
				l.m.dropped.WithLabelValues(node, "stale").Inc()
				ev(StepDropped, "routed by name: a message queued after it was resolved already (stale)")
				return l.finish(ctx, h, seq, m.UUID, obj, func(c *Channel) { c.Stale++ })
			case o == orderSuperseded:
				log.Info("superseded by a message queued after it")
				l.m.dropped.WithLabelValues(node, "superseded").Inc()
				ev(StepDropped, "routed by name: superseded by a message queued after it")
				return l.finish(ctx, h, seq, m.UUID, obj, func(c *Channel) { c.Superseded++ })
			case o == orderHold:
				msg := "holding a message routed by name until the one queued before it is resolved"
				return holdTold(msg)
			}
		} else if !h.ByName() && h.MessageNo <= st.DeliveredNo {
			if offeredBefore {
				return resolvedBefore()
			}
			dup := h.MessageNo == st.DeliveredNo
			log.Info("dropped: destination already has this or a newer message", "delivered_no", st.DeliveredNo)
			l.m.dropped.WithLabelValues(node, dropReason(dup)).Inc()
			ev(StepDropped, fmt.Sprintf("%s already has No %d (%s)", node, st.DeliveredNo, dropReason(dup)))
			return l.finish(ctx, h, seq, m.UUID, obj, func(c *Channel) {
				if dup {
					c.Duplicates++
				} else {
					c.Stale++
				}
			})
		}
		switch {
		case h.ByName():
			// Ordered above.
		case n.Mode == config.ModeLatest:
			if last, ok := l.lastNo(ctx, h); ok && last > h.MessageNo {
				log.Info("superseded by a newer queued message", "newer_no", last)
				l.m.dropped.WithLabelValues(node, "superseded").Inc()
				ev(StepDropped, fmt.Sprintf("superseded by No %d", last))
				return l.finish(ctx, h, seq, m.UUID, obj, func(c *Channel) { c.Superseded++ })
			}
		case n.Mode == config.ModeSequential:
			// A dead message holds the numbers after it: the addressee
			// needs every one, and only the operator may say it goes on
			// without it (relay dead drop).
			if dead := st.deadHold(); dead > 0 && h.MessageNo > dead {
				msg := fmt.Sprintf(gapPrefix+"holding No %d: No %d is a dead letter; retry it once its cause is fixed, or drop it to go on without it (relay dead list)", h.MessageNo, dead)
				return gapTold(msg)
			}
			passed := st.passedNo()
			if passed > 0 && h.MessageNo > passed+1 {
				if p.failingBefore(st, l.states.now()) {
					// Not a gap: the number it waits for is failing at
					// the destination, and that error is what the
					// operator must see (and no gap alert).
					log.Debug(fmt.Sprintf("holding No %d until No %d is delivered", h.MessageNo, passed+1))
					return hold()
				}
				// The run of missing numbers ends below the lowest one
				// queued: the skip the hold names covers all of it.
				lowest, err := p.lowestBelow(ctx, l, node, h, passed, st.RecentSeqs)
				if err != nil {
					return err
				}
				return gapTold(gapHold(h, passed, lowest))
			}
			// Nothing delivered on the channel yet, so any number may
			// start it; but a lower one queued (nacked after a failure,
			// taken by the node's other worker, or queued after this one:
			// mails arrive out of order) must go first, or it would be
			// dropped as stale behind this one (found by review: No 6,
			// queued after No 7, was).
			if passed == 0 {
				lower, err := p.lowestBelow(ctx, l, node, h, 0, st.RecentSeqs)
				if err != nil {
					return err
				}
				if lower > 0 {
					msg := fmt.Sprintf(gapPrefix+"holding No %d until No %d, also queued, is delivered", h.MessageNo, lower)
					if p.failingBefore(st, l.states.now()) {
						log.Debug(msg)
						return hold()
					}
					return gapTold(msg)
				}
			}
		}

		out := message.NewMessage(m.UUID, nil)
		for k, v := range m.Metadata {
			if k != inflightKey {
				out.Metadata.Set(k, v)
			}
		}
		if n.Mode == config.ModeSequential && !n.OverwriteUnread && !h.ByName() {
			// A folder destination holds one file per channel: the one
			// there may be a number the node has not read yet.
			exchange.SetKeep(out, exchange.Keep{On: true, Acked: st.AckedNo, Delivered: st.DeliveredNo})
		}
		out.SetContext(context.WithValue(ctx, recordSeqKey{}, seq))
		exchange.SetBody(out, func(ctx context.Context) (io.ReadCloser, error) {
			return l.b.OpenKnownPayload(ctx, obj, statedSize(m.Metadata.Get(exchange.MetaSize)), m.Metadata.Get(exchange.MetaSHA256))
		})
		adapter := p.adapterOf(node, "deliver")
		err = pub.Publish(node, out)
		if errors.Is(err, exchange.ErrNotTaken) {
			log.Debug("handed back: " + err.Error())
			return hold()
		}
		if ue := (*exchange.UnreadError)(nil); errors.As(err, &ue) {
			// Not failing: the node reads at its own pace. Its own words
			// first, without the adapter's wrapping: a status row shows
			// only the start. In its trace once (found walking through
			// the quick start: a held message showed nothing there),
			// and, when two numbers of the channel wait for the same
			// file (before its first delivery), the channel's state kept
			// by the one that told last (found by review: they wrote
			// their words over each other's, and a held step, at every
			// look).
			why := unreadPrefix + ue.Error()
			switch {
			case in.heldAnew(m.UUID, why):
				ev(StepHeld, ue.Error())
				return holdTold(why)
			case st.LastError == why:
				return holdTold(why) // kept fresh, once a minute
			}
			return hold()
		}
		// Counted past the holds above: a hold is no attempt (found by
		// review: a message held for hours behind an unread file is
		// looked at twice a minute, and each look counted, the error
		// ratio diluted).
		l.m.attempts.WithLabelValues(node, adapter).Inc()
		inPlace := errors.Is(err, exchange.ErrInPlace)
		if inPlace {
			err = nil
		}
		// Cut short by the relay's stop (the pipeline's or the adapter's
		// own): no failure of the destination's to count or show.
		stopping := err != nil && !exchange.IsPermanent(err) && (errors.Is(err, exchange.ErrStopping) || m.Context().Err() != nil)
		if err != nil && !errors.Is(err, exchange.ErrStale) && !stopping {
			l.m.attemptErrors.WithLabelValues(node, adapter).Inc()
		}
		// The destination's answer is in: record it even if the relay is
		// stopping now, or the message would be delivered a second time.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		switch {
		case err == nil:
			now := l.states.now()
			detail := "by " + adapter
			if inPlace {
				// Written by an attempt that stopped before this record.
				detail += ", found in place (written before the relay stopped)"
			}
			// Told once it is recorded: a relay stopped in between
			// delivers it again, finds it in place, and tells it then.
			told := func() {
				if inPlace {
					log.Info("delivered: found in place, written before the relay stopped")
				} else {
					log.Info("delivered")
				}
				l.m.delivered.WithLabelValues(node, adapter).Inc()
				l.m.deliveredBytes.WithLabelValues(node, adapter).Add(payloadSize(m.Metadata))
				l.m.observeLatency(node, m.Metadata)
				ev(StepDelivered, detail)
			}
			return l.finishDone(ctx, &p.unrecorded, outcome{key: key, h: h, seq: seq, id: m.UUID, obj: obj, told: told, fn: func(c *Channel) {
				if h.MessageNo > c.DeliveredNo {
					c.DeliveredNo = h.MessageNo
				}
				c.LastDeliveredAt = now
				c.LastError = ""
			}})
		case errors.Is(err, exchange.ErrStale):
			log.Info("dropped: " + err.Error())
			l.m.dropped.WithLabelValues(node, "stale").Inc()
			ev(StepDropped, err.Error())
			// The destination has a newer message (by another way, or
			// restored): the channel has moved on to it. Nothing up to it
			// is delivered any more, and in sequential mode the next
			// number must not wait for one of these as a gap.
			have := max(h.MessageNo, exchange.StaleHave(err))
			return l.finish(ctx, h, seq, m.UUID, obj, func(c *Channel) {
				c.Stale++
				c.DeliveredNo = max(c.DeliveredNo, have)
				c.LastError = "" // moved on, as after a delivery
			})
		case exchange.IsPermanent(err) || errors.Is(err, jetstream.ErrObjectNotFound):
			reason := err.Error()
			log.Error("dead letter", "stage", StageDeliver, "reason", reason)
			kept := obj
			if errors.Is(err, jetstream.ErrObjectNotFound) {
				kept = "" // nothing to retry with
			}
			if derr := l.dead.put(ctx, DeadLetter{
				Node: node, Stage: StageDeliver, Reason: reason, Header: &h, MsgID: m.UUID, Object: kept,
				Size: atoi64(m.Metadata.Get(exchange.MetaSize)), SHA256: m.Metadata.Get(exchange.MetaSHA256),
				Source: m.Metadata.Get(exchange.MetaSource), FileName: m.Metadata.Get(exchange.MetaFileName),
				StreamSeq: streamSeq(in, m),
			}); derr != nil {
				return derr
			}
			l.m.dead.WithLabelValues(node, StageDeliver).Inc()
			ev(StepDead, reason)
			return l.finishDone(ctx, &p.unrecorded, outcome{key: key, h: h, seq: seq, id: m.UUID, fn: func(c *Channel) { l.diedAtDelivery(c, h, n.Mode, reason) }})
		case stopping:
			log.Info("delivery cut short: relay stopping; offered again after the restart", "err", err)
			return err
		default:
			log.Warn("delivery failed; will retry", "err", err)
			ev(StepDeliveryFailed, err.Error())
			l.states.setError(ctx, h.ExchangePlan, h.From, h.To, err.Error())
			return err
		}
	}
}

// recentSeqs is how many resolved records a channel remembers, so that
// one offered again after its ack was lost is not counted twice: a lost
// ack comes back after AckWait, by when a 1C channel has resolved a few.
const recentSeqs = 16

// failingBefore says the channel's last error is a delivery's since its
// last success (a success clears it), and recent for the retries' backoff:
// on a sequential channel, the number the next one waits for is queued and
// failing, not missing.
func (p *Pipeline) failingBefore(st Channel, now time.Time) bool {
	return st.LastError != "" && !st.HeldOnGap() &&
		now.Sub(st.LastErrorAt) < 2*p.opts.MaxRetryDelay+time.Minute
}

// diedAtDelivery records in c that the message of h died at delivery for
// reason: counted, shown, and on a sequential channel held as the number
// the next ones wait behind (until it is retried or dropped), not as a gap.
func (l *lane) diedAtDelivery(c *Channel, h exchange.Header, mode config.Mode, reason string) {
	c.Dead++
	c.LastError, c.LastErrorAt = reason, l.states.now()
	if mode == config.ModeSequential && !h.ByName() && (c.deadHold() == 0 || h.MessageNo < c.DeadNo) {
		c.DeadNo = h.MessageNo
	}
}

// finish records the outcome of a resolved message and frees its payload;
// seq is the record's stream sequence (0: not in this relay's stream).
func (l *lane) finish(ctx context.Context, h exchange.Header, seq uint64, id, obj string, fn func(c *Channel)) error {
	if _, err := l.states.Update(ctx, h.ExchangePlan, h.From, h.To, func(c *Channel) {
		if seq > 0 && !h.ByName() && h.MessageNo > c.PickedNo {
			// Its pickup's count is not in: the relay stopped between the
			// publish and it (or it is still to come: taken skips it
			// then). Counted here, or the channel would show one waiting
			// fewer for good (found by review: a gap's alert silenced).
			c.Queued++
			c.PickedNo = h.MessageNo
			c.Uncounted = appendLast(c.Uncounted, seq, recentSeqs)
		}
		fn(c)
		c.settle()
		c.Resolved++
		c.LastMsgID = id
		if h.ByName() {
			c.NameSeq = max(c.NameSeq, seq)
		}
		if seq > 0 {
			c.RecentSeqs = appendLast(c.RecentSeqs, seq, recentSeqs)
		}
	}); err != nil {
		return err
	}
	l.dropFinished(ctx, h, seq, obj)
	return nil
}

// dropFinished deletes the payload obj of a finished record (stream
// sequence seq) of h's channel. A message routed by name shares its
// payload with every record of the same content: it stays while a later
// record names it, and is deleted at once under its lock, not behind the
// dropper's queue (found by review: a retake between the look and a late
// delete queued a record naming a deleted payload).
func (l *lane) dropFinished(ctx context.Context, h exchange.Header, seq uint64, obj string) {
	switch {
	case obj == "":
	case !h.ByName():
		l.drop(obj)
	default:
		defer l.payloads.lock(obj)()
		if !l.laterNames(ctx, h, seq, obj) {
			deletePayload(l.b.DeletePayload, obj, l.log)
		}
	}
}

// laterNames says a record queued on h's channel after the one at stream
// sequence seq names the payload obj: a message routed by name taken in
// again while its first record waited (relay send again, the file put
// back past the duplicate window) is one payload for both, and the first
// record's finish deleted it under the second (found by review: superseded
// by itself, a sealed zip was lost). Numbered messages need no look: one
// of the same number and content is a duplicate when its turn comes. Any
// doubt (the look fails, too many records) keeps the payload: one left
// behind costs space, one deleted costs the message.
func (l *lane) laterNames(ctx context.Context, h exchange.Header, seq uint64, obj string) bool {
	if !h.ByName() || seq == 0 {
		return false
	}
	found, n := false, 0
	err := eachMsg(ctx, l.b.Exchange, bus.Subject(h.ExchangePlan, h.From, h.To), seq+1, func(raw *jetstream.RawStreamMsg) bool {
		n++
		found = n > maxInUseScan || raw.Header.Get(exchange.MetaObject) == obj
		return !found
	})
	return found || err != nil
}

// outcome is a resolved record's channel-state update (finish's
// arguments), with what is told once it is written.
type outcome struct {
	key  string
	h    exchange.Header
	seq  uint64
	id   string
	obj  string
	fn   func(c *Channel)
	told func()
}

// unrecorded are outcomes the destination has (a delivery made, a dead
// letter stored) whose channel-state write failed (the KV unavailable), by
// channel: written before the channel's next delivery, so that the
// record, offered again, is not delivered again, and the channel's other
// messages are judged by it (found by review: a mail or HTTP destination,
// which cannot be asked what it holds, got No 6, then No 5, then No 6
// again). Kept in memory: a relay that stops meanwhile delivers it again
// (a folder finds it in place).
type unrecorded struct {
	mu sync.Mutex
	by map[string][]outcome
	// claims are the channel leases (replicas) kept for them.
	claims map[string]*lease
}

// release ends the delivery's hold on the channel key: it keeps claim
// while the channel has an unrecorded outcome, else releases it.
func (u *unrecorded) release(key string, claim *lease) {
	u.mu.Lock()
	if len(u.by[key]) > 0 && claim.Context().Err() == nil {
		if u.claims == nil {
			u.claims = map[string]*lease{}
		}
		u.claims[key] = claim
		u.mu.Unlock()
		return
	}
	u.mu.Unlock()
	claim.Release()
}

// releaseAll releases every lease kept, when the pipeline stops.
func (u *unrecorded) releaseAll() {
	u.mu.Lock()
	claims := u.claims
	u.claims = nil
	u.mu.Unlock()
	for _, c := range claims {
		c.Release()
	}
}

// claimed takes the lease kept for key, nil when none is kept or it is
// lost.
func (u *unrecorded) claimed(key string) *lease {
	u.mu.Lock()
	defer u.mu.Unlock()
	claim := u.claims[key]
	delete(u.claims, key)
	if claim != nil && claim.Context().Err() != nil {
		claim.Release()
		return nil
	}
	return claim
}

func (u *unrecorded) put(outs ...outcome) {
	if len(outs) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.by == nil {
		u.by = map[string][]outcome{}
	}
	u.by[outs[0].key] = append(u.by[outs[0].key], outs...)
}

func (u *unrecorded) take(key string) []outcome {
	u.mu.Lock()
	defer u.mu.Unlock()
	outs := u.by[key]
	delete(u.by, key)
	return outs
}

// finishDone finishes o, or keeps it in u when its write fails: the
// record is then offered again, and recordUnrecorded writes it.
func (l *lane) finishDone(ctx context.Context, u *unrecorded, o outcome) error {
	if err := l.finish(ctx, o.h, o.seq, o.id, o.obj, o.fn); err != nil {
		u.put(o)
		return err
	}
	if o.told != nil {
		o.told()
	}
	return nil
}

// recordUnrecorded writes the channel key's unrecorded outcomes (the
// caller holds the channel's lock); mine says one was the record seq
// (message id, when it has no sequence here), which is resolved then. A
// write that failed may have been applied all the same (its answer lost):
// an outcome whose record the state lists as resolved is not written
// twice.
func (l *lane) recordUnrecorded(ctx context.Context, u *unrecorded, key string, seq uint64, id string) (mine bool, err error) {
	outs := u.take(key)
	for i, o := range outs {
		st, err := l.states.Get(ctx, o.h.ExchangePlan, o.h.From, o.h.To)
		switch {
		case err != nil:
		case o.seq > 0 && slices.Contains(st.RecentSeqs, o.seq):
			l.dropFinished(ctx, o.h, o.seq, o.obj) // finish's, after the write it lost track of
		default:
			err = l.finish(ctx, o.h, o.seq, o.id, o.obj, o.fn)
		}
		if err != nil {
			u.put(outs[i:]...)
			return false, err
		}
		if o.told != nil {
			o.told()
		}
		mine = mine || seq > 0 && o.seq == seq || seq == 0 && o.id == id
	}
	return mine, nil
}

// superseded says a newer message of m's channel (a delivery's message)
// is queued: a higher number, or, routed by name, a later record (found
// by review: a sealed zip waiting for a pull was never superseded).
func (l *lane) superseded(m *message.Message) bool {
	h, err := exchange.HeaderOf(m)
	if err != nil {
		return false
	}
	if h.ByName() {
		seq, _ := m.Context().Value(recordSeqKey{}).(uint64)
		last, err := l.b.Exchange.GetLastMsgForSubject(m.Context(), bus.Subject(h.ExchangePlan, h.From, h.To))
		return seq > 0 && err == nil && last.Sequence > seq
	}
	last, ok := l.lastNo(m.Context(), h)
	return ok && last > h.MessageNo
}

// recordSeqKey keys, in the context of a message handed to a delivery,
// its record's stream sequence: what orders a message routed by name.
type recordSeqKey struct{}

// lastNo is the MessageNo of the newest record queued on the channel.
func (l *lane) lastNo(ctx context.Context, h exchange.Header) (uint64, bool) {
	raw, err := l.b.Exchange.GetLastMsgForSubject(ctx, bus.Subject(h.ExchangePlan, h.From, h.To))
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(raw.Header.Get(exchange.MetaMessageNo), 10, 64)
	return n, err == nil
}

// order is where a message routed by name stands in its channel.
type order int

const (
	orderNext       order = iota // deliver it
	orderStale                   // one queued after it was resolved
	orderSuperseded              // latest: one queued after it waits
	orderHold                    // sequential: one queued before it waits
)

// nameOrder places the record at stream sequence seq of a channel routed by
// name, whose last resolved record is at resolved: the stream order stands
// in for the MessageNo the file does not show. An older one never follows
// a newer one; in latest mode the newest queued wins, in sequential mode
// every one goes in the order it was queued.
func (l *lane) nameOrder(ctx context.Context, h exchange.Header, mode config.Mode, seq, resolved uint64) (order, error) {
	if seq <= resolved {
		return orderStale, nil
	}
	subject := bus.Subject(h.ExchangePlan, h.From, h.To)
	var other *jetstream.RawStreamMsg
	var err error
	if mode == config.ModeSequential {
		other, err = l.b.Exchange.GetMsg(ctx, resolved+1, jetstream.WithGetMsgSubject(subject))
	} else {
		other, err = l.b.Exchange.GetLastMsgForSubject(ctx, subject)
	}
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return orderNext, nil
	case err != nil:
		return orderNext, fmt.Errorf("records of %s: %w", channelName(h), err)
	case mode == config.ModeSequential && other.Sequence < seq:
		return orderHold, nil
	case mode != config.ModeSequential && other.Sequence > seq:
		return orderSuperseded, nil
	}
	return orderNext, nil
}

// jsMeta is the JetStream metadata of the record m, nil when unknown.
func jsMeta(in *inflight, m *message.Message) *jetstream.MsgMetadata {
	v, ok := in.msgs.Load(m.Metadata.Get(inflightKey))
	if !ok {
		return nil
	}
	md, err := v.(jetstream.Msg).Metadata()
	if err != nil {
		return nil
	}
	return md
}

// offeredBefore says the record m (stream sequence seq), offered for the
// first time by node's delivery consumer, had been offered by the older
// consumer it took over (bus.OfferedUpTo): one the destination has
// already was resolved then, and counted (found by review: counted again,
// the channel's pending count read short for good). One that was held
// then and turns out stale now goes uncounted: rare, and the pending
// count then reads one high, not short.
func (p *Pipeline) offeredBefore(node string, in *inflight, m *message.Message, seq uint64) bool {
	upto, _ := p.offeredUpTo.Load(node)
	n, _ := upto.(uint64)
	return seq > 0 && seq <= n && timesOffered(in, m) == 1
}

// streamSeq is the EXCHANGE stream sequence of the record m, 0 when unknown.
func streamSeq(in *inflight, m *message.Message) uint64 {
	if md := jsMeta(in, m); md != nil {
		return md.Sequence.Stream
	}
	return 0
}

// timesOffered is how many times JetStream has offered the record m, 0
// when unknown.
func timesOffered(in *inflight, m *message.Message) uint64 {
	if md := jsMeta(in, m); md != nil {
		return md.NumDelivered
	}
	return 0
}

func atoi64(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// statedSize is the payload size a record states, -1 when it states none:
// the payload's own meta then tells (atoi64's 0 would be a wrong size).
func statedSize(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// channelLocks keeps one channel's deliveries in this process from running
// side by side (the state check, the write and the state update must not
// interleave), while different channels proceed in parallel: one lock per
// channel that has a delivery running or waiting, so channels never wait
// for each other.
type channelLocks struct {
	mu    sync.Mutex
	locks map[string]*channelLock
}

type channelLock struct {
	sem   chan struct{} // holds a token while a delivery runs
	users int           // deliveries holding or waiting for it
	since time.Time     // when the running delivery took it (zero: just now)
}

// lockWait is how long, counted from its start, a channel's running
// delivery is waited for by the channel's next message before that one is
// handed back: long enough for ordinary deliveries to follow each other
// without a hold, short enough that a node's workers are not all tied up
// behind one long delivery.
const lockWait = 2 * time.Second

// lock takes key's lock, waiting until the running delivery has had it
// for wait (a delivery that has run longer is not waited for at all) or ctx
// ends; ok is false when it was not taken.
func (l *channelLocks) lock(ctx context.Context, key string, wait time.Duration) (unlock func(), ok bool) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*channelLock{}
	}
	c := l.locks[key]
	if c == nil {
		c = &channelLock{sem: make(chan struct{}, 1)}
		l.locks[key] = c
	}
	c.users++
	left := wait // only used if the lock is busy
	if !c.since.IsZero() {
		left -= time.Since(c.since)
	}
	l.mu.Unlock()
	leave := func() {
		l.mu.Lock()
		if c.users--; c.users == 0 {
			delete(l.locks, key)
		}
		l.mu.Unlock()
	}
	select {
	case c.sem <- struct{}{}:
	default:
		if left <= 0 {
			leave()
			return nil, false
		}
		t := time.NewTimer(left)
		defer t.Stop()
		select {
		case c.sem <- struct{}{}:
		case <-t.C:
			leave()
			return nil, false
		case <-ctx.Done():
			leave()
			return nil, false
		}
	}
	l.mu.Lock()
	c.since = time.Now()
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		c.since = time.Time{} // zero while the next holder has yet to stamp it
		l.mu.Unlock()
		<-c.sem
		leave()
	}, true
}
