package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// lowestQueued remembers, per channel, the lowest number above its passed
// one that is queued: every look at every message held on a sequential
// channel asks for it, and finding it reads every queued record of the
// channel (found by review: 400 numbers held behind a gap made 15,000
// reads a second, and the missing number, once it came, waited a minute
// to be offered). An answer holds while the channel's passed number and
// its newest record stay the same, for up to maxHoldDelay: a record
// queued since is seen at once, and one resolved since (a dead letter,
// whose number the channel then holds for anyway) at most that late.
// Past a channel's first delivery the answer only words a gap's hold
// (relay skip checks afresh), and holds on the passed number alone.
type lowestQueued struct {
	mu sync.Mutex
	m  map[string]lowestSeen
}

// lowestSeen is one channel's answer and what it holds for.
type lowestSeen struct {
	passed, newest, lowest uint64
	at                     time.Time
}

// lowestBelow is the lowest number of a record of h's channel (to node)
// above passed and below h's own that may still wait, 0 when there is
// none; done are the records resolved lately. It reads the channel only
// when p.lowest has no answer that still holds.
func (p *Pipeline) lowestBelow(ctx context.Context, l *lane, node string, h exchange.Header, passed uint64, done []uint64) (uint64, error) {
	q := &p.lowest
	key := bus.ChannelKey(h.ExchangePlan, h.From, h.To)
	var newest uint64
	if passed == 0 {
		// Before the first delivery the answer decides what goes first.
		last, err := l.b.Exchange.GetLastMsgForSubject(ctx, bus.Subject(h.ExchangePlan, h.From, h.To))
		switch {
		case err == nil:
			newest = last.Sequence
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			return 0, fmt.Errorf("records of %s: %w", channelName(h), err)
		}
	}
	q.mu.Lock()
	seen, ok := q.m[key]
	q.mu.Unlock()
	if !ok || seen.passed != passed || seen.newest != newest || time.Since(seen.at) >= maxHoldDelay {
		lowest, err := l.queuedIn(ctx, h, p.doneThrough(ctx, node)+1, done, passed, math.MaxUint64)
		if err != nil {
			return 0, err
		}
		seen = lowestSeen{passed: passed, newest: newest, lowest: lowest, at: time.Now()}
		q.mu.Lock()
		if q.m == nil {
			q.m = map[string]lowestSeen{}
		}
		q.m[key] = seen
		q.mu.Unlock()
	}
	if seen.lowest >= h.MessageNo {
		return 0, nil
	}
	return seen.lowest, nil
}

// queuedIn is the lowest MessageNo in (lo, hi] of the records of channel h
// that may still wait, 0 when there is none: those from stream sequence
// from on (records before it are done), other than the ones the channel
// resolved lately (done).
func (l *lane) queuedIn(ctx context.Context, h exchange.Header, from uint64, done []uint64, lo, hi uint64) (uint64, error) {
	var found uint64
	err := eachMsg(ctx, l.b.Exchange, bus.Subject(h.ExchangePlan, h.From, h.To), from, func(raw *jetstream.RawStreamMsg) bool {
		if slices.Contains(done, raw.Sequence) {
			return true
		}
		// One the delivery reads as it would: an unreadable record is a
		// dead letter that leaves no mark in the channel's state, and no
		// number waits for it (found by review: it held the channel for
		// good, and refused the skip its own hold named).
		if rh, ok := recordHeader(raw.Header); ok && !rh.ByName() && rh.MessageNo > lo && rh.MessageNo <= hi && (found == 0 || rh.MessageNo < found) {
			found = rh.MessageNo
		}
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("records of %s: %w", channelName(h), err)
	}
	return found, nil
}

// recordHeader is the exchange header of a record whose NATS headers are
// hdr, read as the delivery reads it (Watermill's unmarshaler, then
// exchange.HeaderOf); ok is false for a record the delivery would
// dead-letter as unreadable.
func recordHeader(hdr nats.Header) (h exchange.Header, ok bool) {
	md := message.Metadata{}
	for k, v := range hdr {
		switch {
		case k == wmnats.WatermillUUIDHdr || k == nats.MsgIdHdr:
		case len(v) != 1:
			return h, false
		default:
			md.Set(k, v[0])
		}
	}
	if md.Get(exchange.MetaProblem) != "" {
		return h, false
	}
	h, err := exchange.HeaderOf(&message.Message{Metadata: md})
	return h, err == nil
}
