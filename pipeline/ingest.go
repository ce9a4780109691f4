package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// MessageID is the message's identity on the bus and its Nats-Msg-Id: the
// same file picked up twice gets the same ID and JetStream drops the second.
func MessageID(h exchange.Header, sha string) string {
	return bus.Token(h.ExchangePlan) + "/" + bus.Token(h.From) + "/" + bus.Token(h.To) + "/" +
		strconv.FormatUint(h.MessageNo, 10) + "/" + sha
}

// ReadableID is a message id as an operator reads it: plan, from and to
// decoded from their NATS tokens (ЦО, not =D0=A6=D0=9E). relay send,
// trace and dead show print it, and trace finds a message by it as by the
// id itself. An id that does not decode is returned as it is.
func ReadableID(id string) string {
	parts := strings.SplitN(id, "/", 4)
	if len(parts) < 4 {
		return id
	}
	for i := range 3 {
		s, err := bus.Untoken(parts[i])
		if err != nil {
			return id
		}
		parts[i] = s
	}
	return strings.Join(parts, "/")
}

// ingestHandler takes one picked-up message into JetStream. Returning nil
// acks it, which lets the pickup commit its source; an error nacks it and the
// source stays for a later attempt.
func (p *Pipeline) ingestHandler(node, adapter string, l *lane) message.NoPublishHandlerFunc {
	return func(m *message.Message) error {
		_, err := p.ingest(node, adapter, l, m)
		return err
	}
}

// Outcome says what the ingest made of a message. Push hands it to the
// API, so that relay send tells a message queued from one JetStream
// already had or one dropped as stale.
type Outcome struct {
	// Result is one of the Outcome* constants.
	Result string
	// Detail says why, for anything but OutcomeQueued.
	Detail string
}

// Results of an ingest (Outcome.Result).
const (
	// OutcomeQueued: stored, its record waits for delivery.
	OutcomeQueued = "queued"
	// OutcomeStoredBefore: the same file (number and sha256) was taken in
	// within bus.DuplicateWindow; not queued again.
	OutcomeStoredBefore = "stored_before"
	// OutcomeDropped: the destination already has this number or a newer
	// one; dropped and counted.
	OutcomeDropped = "dropped"
	// OutcomeDead: made a dead letter.
	OutcomeDead = "dead"
)

// ingest takes one picked-up message into JetStream; a nil error lets the
// pickup commit its source.
func (p *Pipeline) ingest(node, adapter string, l *lane, m *message.Message) (Outcome, error) {
	ctx := m.Context()
	log := p.log.With("node", node, "file", m.Metadata.Get(exchange.MetaFileName), "source", m.Metadata.Get(exchange.MetaSource))
	if problem := m.Metadata.Get(exchange.MetaProblem); problem != "" {
		// A header read all the same (a name that contradicts it) goes
		// with the letter.
		var read *exchange.Header
		if h, err := exchange.HeaderOf(m); err == nil {
			read = &h
		}
		return Outcome{OutcomeDead, problem}, l.deadFromPickup(ctx, node, m, read, problem)
	}
	h, err := exchange.HeaderOf(m)
	if err != nil {
		return Outcome{OutcomeDead, err.Error()}, l.deadFromPickup(ctx, node, m, nil, err.Error())
	}
	if h.From != node {
		reason := fmt.Sprintf("message from %q found in the outbox of node %q", h.From, node)
		return Outcome{OutcomeDead, reason}, l.deadFromPickup(ctx, node, m, &h, reason)
	}
	size, err := strconv.ParseInt(m.Metadata.Get(exchange.MetaSize), 10, 64)
	if err != nil {
		return Outcome{}, fmt.Errorf("ingest %s: bad size metadata: %w", node, err)
	}
	sha := m.Metadata.Get(exchange.MetaSHA256)
	id := MessageID(h, sha)
	log = log.With("message_id", id, "channel", channelName(h))

	// A message routed by its file name has no number to compare.
	st, err := l.states.Recent(ctx, h.ExchangePlan, h.From, h.To)
	if err != nil {
		return Outcome{}, err
	}
	if !h.ByName() && h.MessageNo <= st.DeliveredNo {
		dup := h.MessageNo == st.DeliveredNo
		_, err := l.states.Update(ctx, h.ExchangePlan, h.From, h.To, func(c *Channel) {
			if dup {
				c.Duplicates++
			} else {
				c.Stale++
			}
		})
		l.m.dropped.WithLabelValues(h.To, dropReason(dup)).Inc()
		l.event(Event{Step: StepDropped, MsgID: id, File: m.Metadata.Get(exchange.MetaFileName), Node: h.To, Channel: channelName(h), No: h.MessageNo,
			Source: m.Metadata.Get(exchange.MetaSource), Detail: fmt.Sprintf("at pickup: %s already has No %d (%s)", h.To, st.DeliveredNo, dropReason(dup))})
		log.Info("dropped at pickup: destination already has this or a newer message", "message_no", h.MessageNo, "delivered_no", st.DeliveredNo)
		// Its ReceivedNo is the node's word all the same: a sequential
		// channel to it may wait for just that (found by review: a node
		// whose number relay had delivered before, restored from a copy,
		// acknowledged in vain).
		if p.cfg.IsNode(h.To) {
			l.acknowledge(ctx, h, l.states.now(), id, m.Metadata.Get(exchange.MetaFileName))
		}
		return Outcome{OutcomeDropped, fmt.Sprintf("%s already has No %d (%s)", h.To, st.DeliveredNo, dropReason(dup))}, err
	}

	// The same message taken again (its file left by a commit that
	// failed, or by a relay stopped before it) may be stored with its
	// record queued: a second put would rewrite that payload, and,
	// had 1C meanwhile written its next message over the file, delete
	// it under the queued record. What is stored whole stays. Asked
	// of every message: a relay stopped between the publish and the
	// channel state's update left a queued record the state does not
	// show (found by review: its payload deleted, the message lost).
	// A message routed by name shares its payload with every record of
	// the same content: a finishing one must not delete it between this
	// look and the publish of the record that needs it (payloadLocks).
	if h.ByName() {
		defer l.payloads.lock(id)()
	}
	kept, err := l.b.HasPayload(ctx, id, size, sha)
	if err != nil {
		return Outcome{}, fmt.Errorf("ingest %s: %w", node, err)
	}
	if !kept {
		if err := l.putPayload(ctx, m, id, size, sha); err != nil {
			return Outcome{}, err
		}
	}
	if reason := p.routeProblem(h); reason != "" {
		err := l.dead.put(ctx, DeadLetter{
			Node: h.To, Stage: StageRoute, Reason: reason, Header: &h, MsgID: id, Object: id, Size: size, SHA256: sha,
			Source: m.Metadata.Get(exchange.MetaSource), FileName: m.Metadata.Get(exchange.MetaFileName),
		})
		if err != nil {
			return Outcome{}, err
		}
		_, _ = l.states.Update(ctx, h.ExchangePlan, h.From, h.To, func(c *Channel) {
			c.Dead++
			c.LastError, c.LastErrorAt = reason, l.states.now()
		})
		l.m.dead.WithLabelValues(h.To, StageRoute).Inc()
		// Taken in all the same (its payload is kept for a retry): the
		// trace says from where, as for a routed message (found walking
		// through the quick start: it began at "dead").
		l.event(Event{Step: StepPickedUp, MsgID: id, File: m.Metadata.Get(exchange.MetaFileName), Node: node, Channel: channelName(h), No: h.MessageNo,
			Source: m.Metadata.Get(exchange.MetaSource), Size: size, SHA256: sha,
			Detail: fmt.Sprintf("kept for a retry by %s (received No %d); not routed", adapter, h.ReceivedNo)})
		l.event(Event{Step: StepDead, MsgID: id, File: m.Metadata.Get(exchange.MetaFileName), Node: h.To, Channel: channelName(h), No: h.MessageNo,
			Source: m.Metadata.Get(exchange.MetaSource), Size: size, SHA256: sha, Detail: reason})
		log.Warn("dead letter", "stage", StageRoute, "reason", reason)
		// Not deliverable, yet its sender's ReceivedNo acknowledges
		// the reverse channel all the same: when there is one. A node
		// routing.yaml does not know sends nothing through relay, and
		// status showed a channel row from it (found walking through the
		// quick start).
		if p.cfg.IsNode(h.To) {
			l.acknowledge(ctx, h, l.states.now(), id, m.Metadata.Get(exchange.MetaFileName))
		}
		return Outcome{OutcomeDead, reason}, nil
	}

	rec := message.NewMessage(id, nil)
	for k, v := range m.Metadata {
		rec.Metadata.Set(k, v)
	}
	rec.Metadata.Set(exchange.MetaObject, id)
	// Taken in now: before the publish, so that every later step (the
	// delivery may start the moment JetStream has the record) is later.
	pickedAt := time.Now()
	rec.Metadata.Set(metaPickedAt, strconv.FormatInt(pickedAt.UnixNano(), 10))
	dup, seq, err := publishRecord(ctx, l.b.JS, bus.Subject(h.ExchangePlan, h.From, h.To), rec)
	if err != nil {
		return Outcome{}, fmt.Errorf("ingest %s: publish %s: %w", node, id, err)
	}
	if h.ByName() {
		if err := l.byNamePublished(ctx, m, h, id, size, sha, kept, dup, seq); err != nil {
			return Outcome{}, err
		}
	}
	file := m.Metadata.Get(exchange.MetaFileName)
	l.event(Event{Time: pickedAt, Step: StepPickedUp, MsgID: id, File: file, Node: node, Channel: channelName(h), No: h.MessageNo,
		Source: m.Metadata.Get(exchange.MetaSource), Size: size, SHA256: sha,
		Detail: fmt.Sprintf("stored for %s by %s (received No %d)", h.To, adapter, h.ReceivedNo)})
	// Two channels' states, one round trip: they do not depend on
	// each other.
	now := l.states.now()
	var wg sync.WaitGroup
	wg.Go(func() { l.taken(ctx, h, now, !dup, seq) })
	l.acknowledge(ctx, h, now, id, file)
	wg.Wait()
	l.m.picked.WithLabelValues(node, adapter).Inc()
	l.m.pickedBytes.WithLabelValues(node, adapter).Add(float64(size))
	log.Info("picked up", "message_no", h.MessageNo, "received_no", h.ReceivedNo, "bytes", size)
	if dup {
		same := fmt.Sprintf("the same file (No %d, same sha256)", h.MessageNo)
		if h.ByName() {
			same = "the same file (same sha256)" // no number to show
		}
		return Outcome{OutcomeStoredBefore, same + " was taken in before; not queued again"}, nil
	}
	return Outcome{Result: OutcomeQueued}, nil
}

// byNamePublished settles the payload of a message routed by name once
// its record's publish was answered (seq: the record's sequence, the
// earlier one's when dup); the caller holds the payload's lock. kept says
// the payload was stored before this ingest looked.
//   - A new record naming a payload found stored: another relay sharing
//     the channel (no lock between processes) may have deleted it since
//     the look, after its record finished; put again (found by review).
//   - A duplicate (the same file taken in within the duplicate window)
//     whose payload this ingest put, while the earlier record was
//     finished already (its delete came before): the put names nothing
//     and is deleted, or it stayed for good (found by review).
func (l *lane) byNamePublished(ctx context.Context, m *message.Message, h exchange.Header, id string, size int64, sha string, kept, dup bool, seq uint64) error {
	switch {
	case !dup && kept:
		if has, err := l.b.HasPayload(ctx, id, size, sha); err != nil || !has {
			return l.putPayload(ctx, m, id, size, sha)
		}
	case dup && !kept:
		st, err := l.states.Get(ctx, h.ExchangePlan, h.From, h.To)
		if err == nil && st.NameSeq >= seq {
			deletePayload(l.b.DeletePayload, id, l.log)
		}
	}
	return nil
}

// taken records in the channel state that a message was taken in (picked
// up here, or fetched from another relay) at now; seq is its record's
// stream sequence (0: none here). fresh says the stream took a new record:
// it is counted whatever its number (one picked up after a higher one is
// queued all the same). A record the stream already had (the same file
// picked up again) is counted only if its number is new to the channel, or
// its record newer than every one counted: the relay stopped between the
// publish and this update. One the delivery
// counted already when it resolved it (finish) is not counted again.
func (l *lane) taken(ctx context.Context, h exchange.Header, now time.Time, fresh bool, seq uint64, also ...func(c *Channel)) {
	if _, err := l.states.Update(ctx, h.ExchangePlan, h.From, h.To, func(c *Channel) {
		for _, f := range also {
			f(c)
		}
		if i := slices.Index(c.Uncounted, seq); seq > 0 && i >= 0 {
			c.Uncounted = slices.Delete(c.Uncounted, i, i+1)
		} else if fresh || h.MessageNo > c.PickedNo || seq > c.TakenSeq {
			// The stream's record of it newer than every one counted
			// (and not counted at its delivery: Uncounted above): its
			// count never came (found by review: a retry repeated after
			// a lost publish reply).
			c.Queued++
		}
		c.TakenSeq = max(c.TakenSeq, seq)
		c.PickedNo = max(c.PickedNo, h.MessageNo)
		c.LastPickupAt = now
	}); err != nil {
		l.log.Warn("channel state not updated", "channel", channelName(h), "err", err)
	}
}

// countUncounted counts, before the pipeline runs, the record a relay that
// stopped between its publish and its count left on a channel of a node
// this relay serves: the channel's last record, newer than every record
// the channel's count has seen, and not counted at its delivery (finish
// counts one above the picked-up number). Resolved or not, as taken counts
// it: a pickup takes it again and counts it then, unless 1C's newer file
// replaced it; then the channel showed one waiting fewer for good (found
// by review).
func (p *Pipeline) countUncounted(ctx context.Context) {
	states, err := p.states.List(ctx)
	if err != nil {
		p.log.Warn("channel states not read for the count of records taken in before a stop", "err", err)
		return
	}
	for _, c := range states {
		if n := p.cfg.Nodes[c.From]; n == nil || !p.cfg.Serves(n) || c.TakenSeq == 0 {
			continue
		}
		raw, err := p.b.Exchange.GetLastMsgForSubject(ctx, bus.Subject(c.Plan, c.From, c.To))
		if err != nil {
			continue // none, or not readable now: finish still counts it
		}
		no, err := strconv.ParseUint(raw.Header.Get(exchange.MetaMessageNo), 10, 64)
		if err != nil {
			continue
		}
		uncounted := func(c *Channel) bool {
			return raw.Sequence > c.TakenSeq && !slices.Contains(c.Uncounted, raw.Sequence)
		}
		if !uncounted(&c) {
			continue
		}
		name := channelName(exchange.Header{ExchangePlan: c.Plan, From: c.From, To: c.To})
		if _, err := p.states.Update(ctx, c.Plan, c.From, c.To, func(c *Channel) {
			if !uncounted(c) {
				return
			}
			c.Queued++
			c.PickedNo = max(c.PickedNo, no)
			c.TakenSeq = raw.Sequence
			c.Uncounted = appendLast(c.Uncounted, raw.Sequence, recentSeqs)
		}); err != nil {
			p.log.Warn("channel state not updated", "channel", name, "err", err)
			continue
		}
		p.log.Info("counted a message taken in before a stop", "channel", name, "message_no", no)
	}
}

// acknowledge applies ReceivedNo: it acknowledges the reverse channel.
func (l *lane) acknowledge(ctx context.Context, h exchange.Header, now time.Time, id, file string) {
	if h.ReceivedNo == 0 {
		return
	}
	reverse := exchange.Header{ExchangePlan: h.ExchangePlan, From: h.To, To: h.From}
	// A node repeats its ReceivedNo in every message until it receives
	// something new: most acknowledgements change nothing, and need no
	// write and no trace event (a trace shows the first that covers a
	// delivered message).
	if c, err := l.states.Recent(ctx, h.ExchangePlan, h.To, h.From); err == nil && !c.applyAck(h.ReceivedNo, now) {
		return
	}
	l.event(Event{Step: StepAcknowledges, MsgID: id, File: file, Node: h.From, Channel: channelName(reverse), No: h.ReceivedNo,
		Detail: fmt.Sprintf("%s → %s up to No %d", h.To, h.From, h.ReceivedNo)})
	c, err := l.states.Update(ctx, h.ExchangePlan, h.To, h.From, func(c *Channel) { c.applyAck(h.ReceivedNo, now) })
	if err != nil {
		l.log.Warn("acknowledgement not recorded", "err", err)
		return
	}
	if c.Warning != "" && c.WarningAt.Equal(now) {
		l.log.Warn(c.Warning, "channel", channelName(reverse))
	}
}

// publishRecord publishes rec to the EXCHANGE stream on subject, with its
// UUID as Nats-Msg-Id so that the stream's duplicate window drops a
// re-publish; dup says the stream had it already, seq is the record's
// stream sequence. It marshals as watermill-nats does, so the delivery
// subscriber reads it back.
func publishRecord(ctx context.Context, js jetstream.JetStream, subject string, rec *message.Message) (dup bool, seq uint64, err error) {
	nm, err := (&wmnats.NATSMarshaler{}).Marshal(subject, rec)
	if err != nil {
		return false, 0, err
	}
	ack, err := js.PublishMsg(ctx, nm, jetstream.WithMsgID(rec.UUID), jetstream.WithExpectStream(bus.StreamExchange))
	if err != nil {
		return false, 0, err
	}
	return ack.Duplicate, ack.Sequence, nil
}

// routeProblem says why a valid message cannot be delivered, or "".
func (p *Pipeline) routeProblem(h exchange.Header) string { return RouteProblem(p.cfg, h) }

// RouteProblem says why cfg cannot deliver a valid message with header h,
// or "": ingest dead-letters such a message, and the API refuses a push of
// it, so both judge by this one rule.
func RouteProblem(cfg *config.Config, h exchange.Header) string {
	to, ok := cfg.Nodes[h.To]
	switch {
	case !ok || to == nil:
		return fmt.Sprintf("unknown node %q: not in routing.yaml", h.To)
	case to.Deliver == nil:
		return fmt.Sprintf("node %q has no deliver endpoint", h.To)
	}
	return ""
}

// putPayload streams the body into the object store and checks it is the
// file the pickup inspected (same size and sha256).
func (l *lane) putPayload(ctx context.Context, m *message.Message, id string, size int64, sha string) error {
	body, err := exchange.Body(ctx, m)
	if err != nil {
		return fmt.Errorf("ingest: open %s: %w", id, err)
	}
	defer body.Close()
	switch err := putExact(ctx, l.b, id, size, sha, body); {
	case errors.Is(err, errNotExact):
		return fmt.Errorf("ingest: %s changed while it was read (%w)", id, err)
	case err != nil:
		return fmt.Errorf("ingest: store payload %s: %w", id, err)
	}
	return nil
}

// errNotExact says a payload stored was not the bytes expected.
var errNotExact = errors.New("not the bytes expected")

// putExact stores r as the payload name and removes it again unless it was
// exactly size bytes with sha256 sha (hex; "" takes any).
func putExact(ctx context.Context, b *bus.Bus, name string, size int64, sha string, r io.Reader) error {
	n, got, err := b.PutPayload(ctx, name, size, io.LimitReader(r, size+1))
	if err != nil {
		return err
	}
	if n != size || (sha != "" && got != sha) {
		_ = b.DeletePayload(ctx, name)
		return fmt.Errorf("%d bytes with sha256 %s, want %d bytes with sha256 %s: %w", n, got, size, sha, errNotExact)
	}
	return nil
}

// deadFromPickup stores a refused file and records why; the source is then
// committed like any other, its bytes being safe in the dead letter.
func (l *lane) deadFromPickup(ctx context.Context, node string, m *message.Message, h *exchange.Header, reason string) error {
	obj := "dead/" + watermill.NewUUID()
	var size int64
	var sha string
	if stated := statedSize(m.Metadata.Get(exchange.MetaSize)); stated > l.opts.Limits.MaxSize {
		// The pickup says it is too large to keep: not read at all.
		obj, size = "", stated
		reason += " (payload not kept)"
	} else {
		body, err := exchange.Body(ctx, m)
		if err != nil {
			return fmt.Errorf("dead letter: open %s: %w", m.Metadata.Get(exchange.MetaSource), err)
		}
		defer body.Close()
		size, sha, err = storeDeadPayload(ctx, l.b, obj, body, l.opts.Limits.MaxSize)
		if err != nil && !errors.Is(err, context.Canceled) && size > l.opts.Limits.MaxSize {
			obj = "" // too large to keep; the reason still says what it was
			reason += fmt.Sprintf(" (payload of %d+ bytes not kept)", size)
		} else if err != nil {
			return err
		}
	}
	dl := DeadLetter{
		Node: node, Stage: StagePickup, Reason: reason, Header: h, Object: obj, Size: size, SHA256: sha,
		Source: m.Metadata.Get(exchange.MetaSource), FileName: m.Metadata.Get(exchange.MetaFileName),
	}
	if err := l.dead.put(ctx, dl); err != nil {
		if obj != "" {
			_ = l.b.DeletePayload(ctx, obj)
		}
		return err
	}
	l.m.dead.WithLabelValues(node, StagePickup).Inc()
	l.event(Event{Step: StepDead, File: dl.FileName, Node: node, Source: dl.Source, Size: size, SHA256: sha, Detail: "at pickup: " + reason})
	l.log.Warn("dead letter", "node", node, "stage", StagePickup, "file", dl.FileName, "reason", reason)
	return nil
}

// dropReason labels a message dropped because the destination has it (or newer).
func dropReason(dup bool) string {
	if dup {
		return "duplicate"
	}
	return "stale"
}

func channelName(h exchange.Header) string { return h.ExchangePlan + ":" + h.From + "->" + h.To }
