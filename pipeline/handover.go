package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// handover keeps the channel state of messages this relay took in for a
// node another relay serves. That relay fetches them (see fetch) and cannot
// write here, so this relay watches the fetch consumer on its own stream:
// every record below the consumer's ack floor is with the other relay,
// which counts it as resolved here (no longer pending) and records the
// highest number handed over. Each channel remembers the stream sequence of
// the last record counted, so a restart that looks at a record again does
// not count it twice.
type handover struct {
	p     *Pipeline
	node  string
	relay string
	log   *slog.Logger
	// last is the highest stream sequence looked at.
	last uint64
	// counted is called after the first step that succeeded.
	counted func()
}

// handoverEvery is how often the fetch consumers' ack floors are read.
const handoverEvery = 2 * time.Second

// wireHandovers plans a handover watch for every node served by another
// relay by name.
func (p *Pipeline) wireHandovers() []*handover {
	var out []*handover
	for _, name := range p.cfg.NodeNames() {
		n := p.cfg.Nodes[name]
		if n == nil || n.Relay == "" || n.Relay == p.cfg.Relay.ID || n.Deliver == nil {
			continue
		}
		out = append(out, &handover{p: p, node: name, relay: n.Relay, log: p.log.With("node", name, "to_relay", n.Relay)})
	}
	var wg sync.WaitGroup
	wg.Add(len(out))
	for _, h := range out {
		h.counted = sync.OnceFunc(wg.Done)
	}
	p.counted = make(chan struct{})
	go func() {
		wg.Wait()
		close(p.counted)
	}()
	return out
}

// HandoversCounted is closed once every handover watch has counted what
// the other relays had fetched when it started. The sweep's first purge of
// done records waits for it: a record purged before its handover was
// counted would stay pending here for good.
func (p *Pipeline) HandoversCounted() <-chan struct{} {
	if p.counted == nil { // no other relay fetches from here
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.counted
}

// run watches until ctx ends.
func (h *handover) run(ctx context.Context) {
	t := time.NewTicker(handoverEvery)
	defer t.Stop()
	for {
		if err := h.step(ctx); err != nil && ctx.Err() == nil {
			h.log.Debug("handover not recorded", "err", err)
		} else if err == nil {
			h.counted()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// step counts the records fetched since the last step.
func (h *handover) step(ctx context.Context) error {
	b := h.p.b
	cons, err := b.Exchange.Consumer(ctx, fetchConsumer(h.node, h.p.cfg.Relay.ID))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// The other relay runs a version before the names carried the
		// domain, or has not fetched yet.
		cons, err = b.Exchange.Consumer(ctx, bus.LegacyConsumerFor("fetch", h.node))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil
		}
	}
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	floor := info.AckFloor.Stream
	subject := bus.DeliverSubjects(h.node)
	for h.last < floor {
		m, err := b.Exchange.GetMsg(ctx, h.last+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			h.last = floor
			break
		}
		if err != nil {
			return fmt.Errorf("record after %d: %w", h.last, err)
		}
		if m.Sequence > floor {
			h.last = floor
			break
		}
		h.last = m.Sequence
		hd, err := headerOf(m.Header)
		if err != nil {
			continue
		}
		seq, now := m.Sequence, h.p.states.now()
		if _, err := h.p.states.Update(ctx, hd.ExchangePlan, hd.From, hd.To, func(c *Channel) {
			if seq > c.HandedSeq {
				c.HandedSeq = seq
				c.Resolved++
				c.HandedNo = max(c.HandedNo, hd.MessageNo)
				c.HandedTo = h.relay
				c.LastHandedAt = now
			}
		}); err != nil {
			h.last = m.Sequence - 1
			return err
		}
	}
	return nil
}
