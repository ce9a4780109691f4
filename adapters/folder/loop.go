package folder

import (
	"context"
	"log/slog"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Loop is the one goroutine of a polling pickup (IMAP, an HTTP service)
// with the Subscribe/Close contract of a Watermill Subscriber: the output
// channel closes after run returns, Close stops it and waits. The zero
// value is ready; the pickup embeds it.
type Loop struct {
	once    sync.Once
	closing chan struct{}
	stop    sync.Once
	wg      sync.WaitGroup
}

func (l *Loop) init() { l.once.Do(func() { l.closing = make(chan struct{}) }) }

// Closing is closed once Close was called.
func (l *Loop) Closing() <-chan struct{} {
	l.init()
	return l.closing
}

// Start clears the pickup's spool of what a killed relay left, then runs
// run in its goroutine and returns the channel run sends on. run's ctx ends
// with Close too, so that Close also cuts short a long download or request
// (the IMAP session closes its connection when ctx ends).
func (l *Loop) Start(ctx context.Context, spool string, log *slog.Logger, run func(ctx context.Context, out chan<- *message.Message)) <-chan *message.Message {
	l.init()
	ClearSpool(spool, log)
	out := make(chan *message.Message)
	ctx, cancel := context.WithCancel(ctx)
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		select {
		case <-l.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer l.wg.Done()
		defer close(out)
		defer cancel()
		run(ctx, out)
	}()
	return out
}

// Stopped reports whether the pickup should end: Close was called or ctx ended.
func (l *Loop) Stopped(ctx context.Context) bool {
	select {
	case <-l.Closing():
		return true
	default:
		return ctx.Err() != nil
	}
}

// Close stops the loop and waits for it; it is idempotent and safe while a
// message waits for its ack.
func (l *Loop) Close() error {
	l.init()
	l.stop.Do(func() { close(l.closing) })
	l.wg.Wait()
	return nil
}
