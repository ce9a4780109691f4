package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// Stages at which a message can die.
const (
	StagePickup  = "pickup"  // the file is not a valid exchange message
	StageRoute   = "route"   // valid, but nowhere to deliver it
	StageDeliver = "deliver" // the destination refused it for good
)

// DeadLetter is one message relay could not move, with the one-line reason.
// Its payload stays in the object store under Object until dropped.
type DeadLetter struct {
	// Seq is the EXCHANGE_DEAD sequence; it identifies the letter for retry/drop.
	Seq      uint64           `json:"seq"`
	Time     time.Time        `json:"time"`
	Node     string           `json:"node"`
	Stage    string           `json:"stage"`
	Reason   string           `json:"reason"`
	Source   string           `json:"source,omitempty"`
	FileName string           `json:"file_name,omitempty"`
	Header   *exchange.Header `json:"header,omitempty"`
	MsgID    string           `json:"msg_id,omitempty"`
	Object   string           `json:"object,omitempty"`
	Size     int64            `json:"size"`
	SHA256   string           `json:"sha256,omitempty"`
	// StreamSeq is the EXCHANGE sequence of the record that died at
	// delivery: for a message routed by name its place in its channel,
	// which a retry must not put after a newer message; for any, what
	// tells its own record from the same message taken in again.
	StreamSeq uint64 `json:"stream_seq,omitempty"`
	// dedupID, when set, is the letter's Nats-Msg-Id instead of one made
	// of StreamSeq (a fetched record's: its sequence at the other relay).
	dedupID string
}

// Dead reads and writes the EXCHANGE_DEAD stream.
type Dead struct {
	b *bus.Bus
}

// put records a dead letter.
func (d *Dead) put(ctx context.Context, l DeadLetter) error {
	if l.Time.IsZero() {
		l.Time = time.Now().UTC()
	}
	data, err := json.Marshal(l)
	if err != nil {
		return err
	}
	var opts []jetstream.PublishOpt
	if l.dedupID != "" {
		opts = append(opts, jetstream.WithMsgID(l.dedupID))
	} else if l.StreamSeq > 0 {
		// The record dies again when the relay stopped between its letter
		// and its record in the channel state (it is offered again): one
		// letter, within the stream's duplicate window (bus.DuplicateWindow). A retry
		// queues a new record: its death is a new letter.
		opts = append(opts, jetstream.WithMsgID(fmt.Sprintf("%s@%d", l.MsgID, l.StreamSeq)))
	}
	if _, err := d.b.JS.Publish(ctx, bus.DeadSubjectPrefix+bus.Token(l.Node), data, opts...); err != nil {
		return fmt.Errorf("dead letter for %s: %w", l.FileName, err)
	}
	return nil
}

// MaxDeadList bounds what List returns.
const MaxDeadList = 10000

// List returns the dead letters, oldest first: the newest MaxDeadList of
// them (found by review: the oldest were listed, so that with more the
// latest letters, the ones an operator looks for, did not show). Read
// backwards in ranges of ids, as many as are still wanted: dropped and
// retried letters leave holes.
func (d *Dead) List(ctx context.Context) ([]DeadLetter, error) {
	info, err := d.b.Dead.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	if info.State.Msgs == 0 {
		return []DeadLetter{}, nil
	}
	// Direct gets, one letter after another: a consumer per call would pile
	// up ephemeral consumers under a dashboard or a script polling the list.
	var out []DeadLetter
	for hi := info.State.LastSeq; len(out) < MaxDeadList && hi >= info.State.FirstSeq && hi > 0; {
		lo := info.State.FirstSeq
		if want := uint64(MaxDeadList - len(out)); hi >= want && hi-want+1 > lo {
			lo = hi - want + 1
		}
		var part []DeadLetter
		err = eachMsg(ctx, d.b.Dead, bus.DeadSubjectPrefix+">", lo, func(m *jetstream.RawStreamMsg) bool {
			if m.Sequence > hi {
				return false
			}
			l := decodeDead(m)
			l.Seq = m.Sequence
			part = append(part, l)
			return m.Sequence < hi
		})
		if err != nil {
			return nil, fmt.Errorf("dead letters: %w", err)
		}
		out = append(part, out...)
		hi = lo - 1
	}
	if out == nil {
		out = []DeadLetter{}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

// decodeDead reads a letter. One that does not read (written by another
// program, or damaged) is shown as such, not hidden: it can still be
// looked at and dropped.
func decodeDead(m *jetstream.RawStreamMsg) DeadLetter {
	var l DeadLetter
	if err := json.Unmarshal(m.Data, &l); err != nil {
		node, uerr := bus.Untoken(strings.TrimPrefix(m.Subject, bus.DeadSubjectPrefix))
		if uerr != nil {
			node = m.Subject
		}
		return DeadLetter{Time: m.Time, Node: node,
			Reason: fmt.Sprintf("the dead letter itself does not read (%d bytes): %v", len(m.Data), err)}
	}
	return l
}

// ErrNoDeadLetter means the sequence names no dead letter.
var ErrNoDeadLetter = errors.New("no such dead letter")

// Get returns one dead letter.
func (d *Dead) Get(ctx context.Context, seq uint64) (DeadLetter, error) {
	m, err := d.b.Dead.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	l := decodeDead(m)
	l.Seq = seq
	return l, nil
}

// remove deletes the dead letter l (as Get read it) and its payload.
func (d *Dead) remove(ctx context.Context, l DeadLetter, keepPayload bool) error {
	seq := l.Seq
	if l.Object != "" && !keepPayload {
		if err := d.b.DeletePayload(ctx, l.Object); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("dead letter %d: delete payload: %w", seq, err)
		}
	}
	if err := d.b.Dead.DeleteMsg(ctx, seq); err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return nil
}

// DropDead deletes a dead letter and its payload. A numbered message that
// died holds the numbers after it on a sequential channel (as a dead letter
// or as a gap); dropping it is the operator saying the channel goes on
// without it. The channel state records that before the letter goes, so a
// relay stopped in between leaves a letter to drop again, never a channel
// held by a letter that is gone. A payload a queued record or another
// letter names too stays, and then the channel waits for that one.
func (p *Pipeline) DropDead(ctx context.Context, seq uint64) error {
	l, err := p.dead.Get(ctx, seq)
	if err != nil {
		return err
	}
	h := l.Header
	inUse, err := p.payloadInUse(ctx, l)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	// A numbered message that died at delivery, or at route (while its
	// node had no deliver endpoint), is a number its sequential channel
	// waits for: dropped, the channel goes on — unless the same message
	// was taken in again and waits (inUse). A pickup's letter with a
	// header is a file found in another node's outbox: its number is not
	// that channel's to skip.
	if h != nil && !h.ByName() && !inUse && l.Node == h.To && (l.Stage == StageDeliver || l.Stage == StageRoute) {
		if _, err := p.states.Update(ctx, h.ExchangePlan, h.From, h.To, func(c *Channel) {
			c.drop(h.MessageNo)
			// Its reason is not the channel's trouble any more: what the
			// channel waits for next tells its own.
			c.LastError, c.LastErrorAt = "", time.Time{}
		}); err != nil {
			return fmt.Errorf("dead letter %d: %w", seq, err)
		}
	}
	if err := p.dead.remove(ctx, l, inUse); err != nil {
		return err
	}
	e := Event{Step: StepDropped, MsgID: l.MsgID, File: l.FileName, Node: l.Node, Source: l.Source, Detail: "dead letter dropped by the operator"}
	if h != nil {
		e.Channel, e.No = channelName(*h), h.MessageNo
	}
	recordEvent(p.b.Conn, p.log, e)
	return nil
}

// doneThrough is the stream sequence up to which node's records are all
// done: its delivery consumer's ack floor (they stay in the stream until
// PurgeDone), 0 when unknown.
func (p *Pipeline) doneThrough(ctx context.Context, node string) uint64 {
	c, err := p.b.Exchange.Consumer(ctx, bus.ConsumerName(p.cfg.Relay.ID, node))
	if err != nil {
		return 0
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0
	}
	return ci.AckFloor.Stream
}

// maxInUseScan bounds the records of a channel payloadInUse reads.
const maxInUseScan = 10000

// payloadInUse says a queued record, or another dead letter, names the
// payload of the letter l: a letter of route or delivery keeps the
// message's own payload, which the same message taken in again (its file
// put back in the outbox after a fix, while the letter stayed) names too.
// Dropping the letter must not take that record's payload with it. A
// channel with more queued records (or a node with more letters) than
// maxInUseScan counts as in use: a payload left behind costs space, one
// deleted costs the message.
func (p *Pipeline) payloadInUse(ctx context.Context, l DeadLetter) (bool, error) {
	if l.Object == "" || l.Header == nil {
		return false, nil // a pickup's letter keeps its payload under a name of its own
	}
	subject := bus.Subject(l.Header.ExchangePlan, l.Header.From, l.Header.To)
	next := p.doneThrough(ctx, l.Header.To) + 1
	inUse, n := false, 0
	err := eachMsg(ctx, p.b.Exchange, subject, next, func(raw *jetstream.RawStreamMsg) bool {
		n++
		// A record before the letter's own is one this message died as
		// before (the letter is its retry's) and is done, whatever the
		// ack floor says: the floor stays below any record of the node
		// still unacked, one held on another channel's gap too (found by
		// review: the channel was held for good behind a dropped letter).
		inUse = n > maxInUseScan || raw.Sequence > l.StreamSeq && raw.Header.Get(exchange.MetaObject) == l.Object
		return !inUse
	})
	if err != nil {
		return false, fmt.Errorf("records of %s: %w", channelName(*l.Header), err)
	}
	if inUse {
		return true, nil
	}
	// Another letter of the same message (a route letter written twice:
	// the file taken again before its source was committed) still needs
	// the payload to be retried (found by review: dropping the duplicate
	// lost the message).
	n = 0
	err = eachMsg(ctx, p.b.Dead, bus.DeadSubjectPrefix+bus.Token(l.Node), 1, func(raw *jetstream.RawStreamMsg) bool {
		n++
		if raw.Sequence != l.Seq {
			o := decodeDead(raw)
			inUse = n > maxInUseScan || o.Object == l.Object
		}
		return !inUse
	})
	if err != nil {
		return false, fmt.Errorf("dead letters of %s: %w", l.Node, err)
	}
	return inUse, nil
}

// storeDeadPayload keeps a refused file's bytes so the operator can retry it.
func storeDeadPayload(ctx context.Context, b *bus.Bus, name string, r io.Reader, limit int64) (int64, string, error) {
	n, sum, err := b.PutPayload(ctx, name, -1, io.LimitReader(r, limit+1))
	if err != nil {
		return n, "", fmt.Errorf("store dead payload %s: %w", name, err)
	}
	if n > limit {
		_ = b.DeletePayload(ctx, name)
		return n, "", fmt.Errorf("store dead payload %s: larger than %d bytes", name, limit)
	}
	return n, sum, nil
}
