package main

import (
	"context"
	"testing"
	"time"
)

// TestLastResortEndsWithRun: once run has returned, its last-resort
// watcher must not go on to kill the process (it did, 20 s after the first
// smoke test, in the middle of the next one).
func TestLastResortEndsWithRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	close(finished) // run returned
	cancel()        // and its deferred stop ended the signal context
	done := make(chan struct{})
	go func() { lastResort(ctx, finished); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("lastResort still waits after run finished: it would exit the process")
	}
}
