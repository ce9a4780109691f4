package pipeline

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// leasedPickup runs a node's pickup only while this replica holds the
// node's pickup lease, so replicas sharing a NATS cluster never poll the
// same FTP folder or mailbox at once. Each lease term gets a fresh adapter
// from open; when the lease is lost the adapter is closed, and the replica
// that takes the lease next starts its own. A message taken in a term that
// ends before its ack stays at the source and is taken again by the next
// holder; its Nats-Msg-Id makes JetStream drop the second copy.
type leasedPickup struct {
	leases *leases
	key    string
	open   func() (message.Subscriber, error)
	log    *slog.Logger

	mu  sync.Mutex
	cur message.Subscriber // the running term's adapter, nil on standby
	// startErr is why the last term's adapter did not start, kept (for
	// `relay status`) until a term starts or another replica has held the
	// lease for a whole TTL (it runs the pickup then).
	startErr   string
	startErrAt time.Time

	closeOnce sync.Once
	closing   chan struct{}
	wg        sync.WaitGroup
}

func newLeasedPickup(ls *leases, key string, open func() (message.Subscriber, error), log *slog.Logger) *leasedPickup {
	return &leasedPickup{leases: ls, key: key, open: open, log: log, closing: make(chan struct{})}
}

// Subscribe returns one channel that carries the messages of every term.
func (s *leasedPickup) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan *message.Message)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.closing:
		case <-ctx.Done():
		}
		cancel()
	}()
	go func() {
		defer s.wg.Done()
		defer close(out)
		for ctx.Err() == nil {
			// Another replica holding the lease for a whole TTL runs the
			// pickup: this one's start error is stale from then on, not
			// only once this one holds the lease again (found by review).
			stale := time.AfterFunc(s.leases.ttl, func() { s.failed(nil) })
			l, err := s.leases.hold(ctx, s.key)
			stale.Stop()
			if err != nil {
				return
			}
			s.log.Info("pickup lease taken: this replica runs the pickup", "lease", s.key)
			s.term(l.Context(), topic, out)
			l.Release()
			if ctx.Err() == nil {
				s.log.Info("pickup lease ended: another replica may run the pickup", "lease", s.key)
				// Let another replica have a go before asking again.
				select {
				case <-ctx.Done():
				case <-time.After(s.leases.ttl / 3):
				}
			}
		}
	}()
	return out, nil
}

// term runs one adapter until ctx (the lease) ends or the adapter stops.
func (s *leasedPickup) term(ctx context.Context, topic string, out chan<- *message.Message) {
	sub, err := s.open()
	if err != nil {
		s.failed(err)
		return
	}
	s.mu.Lock()
	s.cur = sub
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		if err := sub.Close(); err != nil {
			s.log.Warn("pickup close", "err", err)
		}
	}()
	in, err := sub.Subscribe(ctx, topic)
	if err != nil {
		s.failed(err)
		return
	}
	s.failed(nil)
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-in:
			if !ok {
				return
			}
			select {
			case out <- m:
			case <-ctx.Done():
				m.Nack()
				return
			}
		}
	}
}

// Close stops the current term and waits.
func (s *leasedPickup) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}

// failed records why a term's adapter did not start (nil: it started, or
// another replica runs the pickup).
func (s *leasedPickup) failed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.startErr, s.startErrAt = "", time.Time{}
		return
	}
	s.log.Error("pickup not started", "err", err)
	s.startErr, s.startErrAt = "pickup not started: "+err.Error(), time.Now()
}

// LastError is the running adapter's trouble, or why the last term's
// adapter did not start; a standby replica has none.
func (s *leasedPickup) LastError() (string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.cur.(errorReporter); ok {
		return r.LastError()
	}
	return s.startErr, s.startErrAt
}
