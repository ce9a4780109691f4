package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// dropper deletes the payloads of finished messages behind the delivery:
// the delete costs three requests (look up, delete marker, purge of the
// chunks) that the next message need not wait for. The state already says
// the message is finished; a payload whose delete is lost (the relay
// stopped first) only takes space.
type dropper struct {
	del  func(ctx context.Context, name string) error
	q    chan string
	done chan struct{}
	once sync.Once
	log  *slog.Logger
	// mu orders drops against close: a handler the router left running
	// past its close drops after it (local CI: a send on the closed
	// queue).
	mu     sync.RWMutex
	closed bool
}

// dropQueue bounds the payloads waiting for their delete; a full queue makes
// the delivery delete its payload itself.
const dropQueue = 256

func newDropper(del func(ctx context.Context, name string) error, log *slog.Logger) *dropper {
	d := &dropper{del: del, q: make(chan string, dropQueue), done: make(chan struct{}), log: log}
	go func() {
		defer close(d.done)
		for name := range d.q {
			d.delete(name)
		}
	}()
	return d
}

// drop deletes the payload name, soon.
func (d *dropper) drop(name string) {
	d.mu.RLock()
	if !d.closed {
		select {
		case d.q <- name:
			d.mu.RUnlock()
			return
		default:
		}
	}
	d.mu.RUnlock()
	d.delete(name)
}

func (d *dropper) delete(name string) { deletePayload(d.del, name, d.log) }

// deletePayload deletes the payload name through del, logging a failure:
// the message is finished either way.
func deletePayload(del func(ctx context.Context, name string) error, name string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := del(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		log.Warn("payload not deleted", "object", name, "err", err)
	}
}

// close deletes what is queued and stops; a drop after it deletes at once.
func (d *dropper) close() error {
	d.once.Do(func() {
		d.mu.Lock()
		d.closed = true
		close(d.q)
		d.mu.Unlock()
	})
	<-d.done
	return nil
}
