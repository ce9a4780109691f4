package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// consumerSubscriber is a Watermill subscriber on a durable JetStream pull
// consumer. It replaces watermill-nats' jetstream.Subscriber, whose close
// races a message callback: its monitor goroutine closes the output channel
// while a callback may be selecting between "closing" and a send on that
// channel, and the send can win (panic: send on closed channel, v2.1.3
// message_handler.go:44). It also drained the connection on Close, which our
// workers share.
//
// Here only the consume callbacks send on a subscription's output, a send
// only starts while the subscription is open (checked under mu), and the
// output is closed after the subscription is marked closed under mu, so no
// send can be in progress or start later.
type consumerSubscriber struct {
	js           jetstream.JetStream
	stream       string
	consumer     jetstream.ConsumerConfig
	legacy       string
	bound        func(jetstream.Consumer)
	pullOpts     []jetstream.PullMessagesOpt
	unmarshaler  msgUnmarshaler
	logger       watermill.LoggerAdapter
	closeTimeout time.Duration

	mu     sync.Mutex
	closed bool
	subs   map[*consumeSub]struct{}
}

// msgUnmarshaler turns a JetStream message into a Watermill message.
type msgUnmarshaler interface {
	Unmarshal(jetstream.Msg) (*message.Message, error)
}

// nakDelayKey is the metadata key in which a handler that nacks a message
// says how long it is to wait before it is offered again (a Go duration);
// without it the message is offered again at once. The handler decides
// because only it knows why: a message waiting for its turn comes back
// soon, one whose delivery failed backs off by its own failures (the
// server's delivery count, which counts the waits too, would not tell).
const nakDelayKey = "_relay_nak_delay"

// setNakDelay says, on a message about to be nacked, how long it waits.
func setNakDelay(m *message.Message, d time.Duration) {
	m.Metadata.Set(nakDelayKey, d.String())
}

// consumerSubscriberConfig configures a consumerSubscriber.
type consumerSubscriberConfig struct {
	// Conn is used, never drained or closed: its owner closes it.
	Conn *nats.Conn
	// Stream and Consumer: the durable consumer is created or updated with
	// this config on every Subscribe.
	Stream   string
	Consumer jetstream.ConsumerConfig
	// Legacy is the name the consumer had before (bus.EnsureConsumer).
	Legacy string
	// Bound, if set, is told the consumer at each Subscribe.
	Bound func(jetstream.Consumer)
	// PullOptions are passed to Messages (e.g. PullMaxMessages(1)).
	PullOptions []jetstream.PullMessagesOpt
	Unmarshaler msgUnmarshaler
	Logger      watermill.LoggerAdapter
	// CloseTimeout bounds how long Close waits for the consume callbacks
	// (default 30s).
	CloseTimeout time.Duration
}

func newConsumerSubscriber(cfg consumerSubscriberConfig) (*consumerSubscriber, error) {
	if cfg.Conn == nil || cfg.Unmarshaler == nil || cfg.Stream == "" {
		return nil, errors.New("consumer subscriber: Conn, Stream and Unmarshaler are required")
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = watermill.NopLogger{}
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 30 * time.Second
	}
	return &consumerSubscriber{
		js: js, stream: cfg.Stream, consumer: cfg.Consumer, legacy: cfg.Legacy, bound: cfg.Bound, pullOpts: cfg.PullOptions,
		unmarshaler: cfg.Unmarshaler, logger: cfg.Logger,
		closeTimeout: cfg.CloseTimeout,
		subs:         map[*consumeSub]struct{}{},
	}, nil
}

// consumeSub is one Subscribe: a Consume on the durable consumer feeding one
// output channel.
type consumeSub struct {
	s      *consumerSubscriber
	output chan *message.Message
	it     jetstream.MessagesContext
	// ctx is the parent of the messages' contexts; cancelled at close.
	ctx    context.Context
	cancel context.CancelFunc

	// mu orders the callbacks' wg.Add and sends against close: a callback
	// holds it shared while it checks closed and (then) sends; close takes
	// it exclusively to set closed.
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup

	once sync.Once
	err  error
	done chan struct{} // closed when the subscription is fully closed
}

// Subscribe creates or updates the durable consumer and starts consuming it.
// topic is not used: the consumer's config says what it reads. The returned
// channel is closed when ctx ends or the subscriber is closed, after every
// consume callback has returned.
func (s *consumerSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("subscriber closed")
	}
	c, err := bus.EnsureConsumer(ctx, s.js, s.stream, s.consumer, s.legacy)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", s.consumer.Durable, err)
	}
	if s.bound != nil {
		s.bound(c)
	}
	sub := &consumeSub{s: s, output: make(chan *message.Message), done: make(chan struct{})}
	sub.ctx, sub.cancel = context.WithCancel(context.WithoutCancel(ctx))
	sub.it, err = c.Messages(s.pullOpts...)
	if err != nil {
		sub.cancel()
		return nil, fmt.Errorf("consume %s: %w", s.consumer.Durable, err)
	}
	s.subs[sub] = struct{}{}
	sub.wg.Add(1)
	go sub.loop()
	go func() {
		select {
		case <-ctx.Done():
			if err := sub.close(); err != nil {
				s.logger.Error("Closing subscription", err, nil)
			}
		case <-sub.done:
		}
	}()
	return sub.output, nil
}

// Close stops every subscription and waits for them (each bounded by
// CloseTimeout). It is idempotent and leaves the connection open.
func (s *consumerSubscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	subs := make([]*consumeSub, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()

	errs := make([]error, len(subs))
	var wg sync.WaitGroup
	for i, sub := range subs {
		wg.Go(func() { errs[i] = sub.close() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// close ends the subscription, once; later calls wait for the first.
//
// The order matters:
//  1. cancel the messages' contexts: the handler gives up, a callback waiting
//     to send or for an ack returns;
//  2. stop the iterator, so the loop takes no new message (one it already
//     took may still be handled: step 3 covers it);
//  3. mark closed under mu: a callback starting after this returns at once,
//     one that was sending has finished (it held mu shared, and its select
//     was woken by step 1); no send is in progress or can start;
//  4. wait for the callbacks that were running to return (acks in flight
//     finish), bounded by closeTimeout;
//  5. close the output: safe by 3 even if 4 timed out.
func (sub *consumeSub) close() error {
	sub.once.Do(func() {
		sub.cancel()
		sub.it.Stop()
		sub.mu.Lock()
		sub.closed = true
		sub.mu.Unlock()

		waited := make(chan struct{})
		go func() { sub.wg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(sub.s.closeTimeout):
			sub.err = fmt.Errorf("consumer %s: callbacks still running after %s", sub.s.consumer.Durable, sub.s.closeTimeout)
		}
		close(sub.output)

		sub.s.mu.Lock()
		delete(sub.s.subs, sub)
		sub.s.mu.Unlock()
		close(sub.done)
	})
	<-sub.done
	return sub.err
}

// enter registers a running callback; false when the subscription is closed.
func (sub *consumeSub) enter() bool {
	sub.mu.RLock()
	defer sub.mu.RUnlock()
	if sub.closed {
		return false
	}
	sub.wg.Add(1)
	return true
}

// send hands m to the output unless the subscription is closing.
func (sub *consumeSub) send(m *message.Message) bool {
	sub.mu.RLock()
	defer sub.mu.RUnlock()
	if sub.closed || sub.ctx.Err() != nil {
		return false
	}
	select {
	case sub.output <- m:
		return true
	case <-sub.ctx.Done():
		return false
	}
}

// nextWait bounds the first wait for a message after one was handled. The
// iterator asks the server for the next message when Next is called, but
// skips the request while its previous one is still being sent (nats.go
// v1.55.0, the fetchInProgress check in checkPending): a message handled
// faster than that leaves no request outstanding, and the worker would wait
// until two heartbeats were missed (10s). A second Next asks again. That one
// waits without a bound: only a long wait keeps the heartbeat check that
// replaces a request lost in a NATS outage (it is per call, 2 × 5s).
const nextWait = time.Second

// loop takes one message at a time from the iterator and handles it, until
// the iterator is stopped. The subscription (one inbox) lives as long as the
// loop, so a message the server sends late to a pull request still arrives.
func (sub *consumeSub) loop() {
	defer sub.wg.Done()
	log := watermill.LogFields{"consumer": sub.s.consumer.Durable}
	bounded := true
	for {
		var msg jetstream.Msg
		var err error
		if bounded {
			msg, err = sub.it.Next(jetstream.NextMaxWait(nextWait))
		} else {
			msg, err = sub.it.Next()
		}
		switch {
		case err == nil:
			sub.handle(msg)
			bounded = true
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return
		case errors.Is(err, nats.ErrTimeout):
			bounded = false
		default:
			sub.s.logger.Error("Cannot take the next message", err, log)
			select {
			case <-sub.ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// handle is the consume callback: one JetStream message, handed to the
// output, then acked or nacked as the handler decides. If the subscription
// closes first nothing is sent: JetStream offers the message again after the
// consumer's AckWait.
func (sub *consumeSub) handle(msg jetstream.Msg) {
	if !sub.enter() {
		return
	}
	defer sub.wg.Done()
	s := sub.s
	m, err := s.unmarshaler.Unmarshal(msg)
	if err != nil || m == nil {
		// Not ours to judge: leave it to AckWait, as a close would.
		s.logger.Error("Cannot unmarshal message", err, watermill.LogFields{"subject": msg.Subject()})
		return
	}
	fields := watermill.LogFields{"message_uuid": m.UUID, "subject": msg.Subject()}
	ctx, cancel := context.WithCancel(sub.ctx)
	defer cancel()
	m.SetContext(ctx)
	if !sub.send(m) {
		s.logger.Trace("Closing, message not handed over", fields)
		return
	}
	select {
	case <-m.Acked():
		sub.ack(msg, fields)
	case <-m.Nacked():
		sub.nak(msg, m, fields)
	case <-ctx.Done():
		// Closing. A decision made at the same moment still counts.
		select {
		case <-m.Acked():
			sub.ack(msg, fields)
		case <-m.Nacked():
			sub.nak(msg, m, fields)
		default:
			s.logger.Trace("Closing, message left to redelivery", fields)
		}
	}
}

// ack acks without waiting for the server to confirm: the channel state,
// written before, is what says the message is delivered. An ack that is
// lost brings the message back after AckWait, and the delivery drops it as
// one the destination has (waiting for the confirmation would not save it:
// the message comes back all the same when the confirmation times out).
// The connection flushes it on close, so an ack made just before close
// still gets through.
func (sub *consumeSub) ack(msg jetstream.Msg, fields watermill.LogFields) {
	if err := msg.Ack(); err != nil {
		sub.s.logger.Error("Cannot send ack", err, fields)
		return
	}
	sub.s.logger.Trace("Message acked", fields)
}

// nak asks for redelivery after the delay the handler set on m (see
// nakDelayKey).
func (sub *consumeSub) nak(msg jetstream.Msg, m *message.Message, fields watermill.LogFields) {
	delay, _ := time.ParseDuration(m.Metadata.Get(nakDelayKey))
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		sub.s.logger.Error("Cannot send nak", err, fields)
		return
	}
	sub.s.logger.Trace("Message nacked", fields.Add(watermill.LogFields{"delay": delay.String()}))
}
