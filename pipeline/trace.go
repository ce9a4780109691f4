package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// Event is one step of a message's way through relay. The pipeline writes
// them to EXCHANGE_EVENTS as it goes (no log scraping); `relay trace`,
// the API and the dashboard read them back.
type Event struct {
	Time time.Time `json:"time"`
	// Step is picked_up, delivered, delivery_failed, dropped, dead or
	// acknowledges.
	Step  string `json:"step"`
	MsgID string `json:"msg_id,omitempty"`
	File  string `json:"file,omitempty"`
	// Node is where it happened: the pickup's node, or the destination.
	Node string `json:"node,omitempty"`
	// Channel (plan:from->to) and No place the message; for acknowledges
	// they are the acknowledged channel and its acknowledged No.
	Channel string `json:"channel,omitempty"`
	No      uint64 `json:"no,omitempty"`
	Source  string `json:"source,omitempty"`
	Size    int64  `json:"size,omitempty"`
	SHA256  string `json:"sha256,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// Trace steps.
const (
	StepPickedUp       = "picked_up"
	StepDelivered      = "delivered"
	StepDeliveryFailed = "delivery_failed"
	StepDropped        = "dropped"
	StepDead           = "dead"
	StepAcknowledges   = "acknowledges"
	// StepFetched: the message moved here from another relay's domain.
	StepFetched = "fetched"
	// StepRetried: the operator sent a dead letter on again (relay dead
	// retry); the steps after it carry the id <id>/retry-<N>.
	StepRetried = "retried"
	// StepHeld: a sequential channel's message waits for its node to read
	// the one in its folder; told once per reason.
	StepHeld = "held"
)

// event records e without waiting: a lost event costs a line of a trace,
// never a message, so the pipeline does not slow down for it.
func (l *lane) event(e Event) { recordEvent(l.b.Conn, l.log, e) }

// recordEvent publishes e on conn (see lane.event).
func recordEvent(conn *nats.Conn, log *slog.Logger, e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	key := e.MsgID
	if key == "" {
		key = e.Source + "\x00" + e.File
	}
	sum := sha256.Sum256([]byte(key))
	// A plain publish: the stream stores it all the same, and no
	// acknowledgement travels back for something nobody waits for.
	if err := conn.Publish(bus.EventSubjectPrefix+hex.EncodeToString(sum[:12]), b); err != nil {
		log.Debug("trace event not recorded", "step", e.Step, "err", err)
	}
}

// traceScan bounds how many of the newest events a trace reads.
const traceScan = 100_000

// DefaultTraceLimit is how many events a trace returns unless told.
const DefaultTraceLimit = 1000

// TraceQuery selects events: those of a message id, of a file name, or the
// latest of a node.
type TraceQuery struct {
	// Match is a message id or a file name.
	Match string
	// Node, when Match is empty, asks for that node's latest events.
	Node string
	// Limit caps the result (newest kept); 0 means DefaultTraceLimit.
	Limit int
}

// Trace returns the matching events, oldest first. For every message that
// was delivered it adds the acknowledgement that covers it, if one came: a
// message back on the reverse channel whose ReceivedNo reached its No.
func (p *Pipeline) Trace(ctx context.Context, q TraceQuery) ([]Event, error) {
	if q.Limit <= 0 {
		q.Limit = DefaultTraceLimit
	}
	info, err := p.b.Events.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	out := []Event{}
	if info.State.Msgs == 0 {
		return out, nil
	}
	start := info.State.FirstSeq
	if info.State.LastSeq > traceScan && info.State.LastSeq-traceScan > start {
		start = info.State.LastSeq - traceScan
	}
	var acks []Event
	err = readEvents(ctx, p.b.Events, start, info.State.LastSeq, func(e Event) {
		if e.Step == StepAcknowledges {
			acks = append(acks, e)
		}
		switch {
		case q.Match != "" && (e.File == q.Match || idMatches(e.MsgID, q.Match) || idMatches(ReadableID(e.MsgID), q.Match)):
			// The id as relay prints it (ReadableID) finds the
			// message as the id itself does.
		case q.Match == "" && q.Node != "" && e.Node == q.Node:
		default:
			return
		}
		out = append(out, e)
	})
	if err != nil {
		return nil, fmt.Errorf("trace: %w", err)
	}
	// The acknowledgement of each delivered message, once.
	seen := map[string]bool{}
	for _, e := range out {
		if e.Step != StepDelivered || seen[e.MsgID] || q.Match == "" {
			continue
		}
		seen[e.MsgID] = true
		for _, a := range acks {
			if a.Channel == e.Channel && a.No >= e.No && !a.Time.Before(e.Time) {
				out = append(out, Event{Time: a.Time, Step: "acknowledged", MsgID: e.MsgID, File: e.File, Node: e.Node,
					Channel: e.Channel, No: e.No, Detail: fmt.Sprintf("by %s (%s, received No %d)", ReadableID(a.MsgID), a.File, a.No)})
				break
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if len(out) > q.Limit {
		out = out[len(out)-q.Limit:]
	}
	return out, nil
}

// traceWait is how long a trace waits for the next event it knows is
// stored before it gives up: the stream delivers them back to back, so
// this is a server that stopped answering, not a slow one.
const traceWait = 15 * time.Second

// traceResetTries bounds the tries at each new consumer readEvents makes.
const traceResetTries = 3

// readEvents hands fn every event of stream from sequence from through
// last, oldest first. It reads through one ordered consumer's message
// iterator, which makes a new consumer and goes on where it was when
// the server stops answering for the old one (a cluster server that
// restarted a moment ago answers "no responders" for consumers placed
// on it). It fails rather than return part of the events.
func readEvents(ctx context.Context, stream jetstream.Stream, from, last uint64, fn func(Event)) error {
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
		// Each new consumer is made in up to this many tries (10 s each
		// at most, 1 s and 2 s apart). The client's default tries for
		// ever, deaf to ctx: with a JetStream that did not answer (the
		// stream gone, a cluster without quorum) a trace, the dashboard's
		// too, never returned (found by review).
		MaxResetAttempts: traceResetTries,
	})
	if err != nil {
		return fmt.Errorf("events from %d: %w", from, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("events from %d: %w", from, err)
	}
	defer it.Stop()
	// seq is the last sequence read; the loop ends once last was.
	for seq := from - 1; seq < last; {
		m, err := nextEvent(ctx, it)
		if err != nil {
			return fmt.Errorf("events %d..%d: after %d: %w", from, last, seq, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("events %d..%d: after %d: %w", from, last, seq, err)
		}
		seq = md.Sequence.Stream
		var e Event
		if json.Unmarshal(m.Data(), &e) == nil {
			fn(e)
		}
	}
	return nil
}

// nextEvent waits up to traceWait for the iterator's next message.
func nextEvent(ctx context.Context, it jetstream.MessagesContext) (jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, traceWait)
	defer cancel()
	return it.Next(jetstream.NextContext(ctx))
}

// idMatches says whether id is match's message: the same id, or the
// record of a retry of it (named <id>/retry-<N>), so that the id Retry
// printed finds its later steps too.
func idMatches(id, match string) bool {
	return id == match || strings.HasPrefix(id, match+retrySuffix)
}
