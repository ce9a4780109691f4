package folder

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// TestLoopCloseEndsRunContext: Close ends run's context, so a pickup
// blocked in a long download (which only its context can cut short)
// stops at once; the output channel is closed after run returns.
func TestLoopCloseEndsRunContext(t *testing.T) {
	var l Loop
	out := l.Start(context.Background(), t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)),
		func(ctx context.Context, _ chan<- *message.Message) {
			<-ctx.Done() // a download that only ctx interrupts
		})
	closed := make(chan struct{})
	go func() { l.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: run's context was not ended")
	}
	if _, ok := <-out; ok {
		t.Error("output channel still open after Close")
	}
}
