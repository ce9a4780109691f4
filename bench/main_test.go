package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
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

// TestEvenRoundsRefused: with an even -rounds there is no median round;
// picking one of the two middle ones would lean one way, so the flag is
// refused before anything runs.
func TestEvenRoundsRefused(t *testing.T) {
	for _, n := range []string{"2", "4", "0"} {
		var stdout, stderr bytes.Buffer
		if rc := run([]string{"-q", "-scenario", "throughput", "-rounds", n}, &stdout, &stderr); rc != 2 {
			t.Errorf("-rounds %s: exit %d, want 2 (flag error)\nstderr: %s", n, rc, stderr.String())
		} else if !strings.Contains(stderr.String(), "want an odd number") {
			t.Errorf("-rounds %s: stderr does not say why: %s", n, stderr.String())
		}
	}
}

// TestSideOrderRotates: over rounds each side runs first, in the middle
// and last alike; round 1 keeps baseline, floor, relay.
func TestSideOrderRotates(t *testing.T) {
	want := [][]string{
		{"baseline", "floor", "relay"},
		{"floor", "relay", "baseline"},
		{"relay", "baseline", "floor"},
		{"baseline", "floor", "relay"},
	}
	for i, w := range want {
		if got := sideOrder(i, true); !slices.Equal(got, w) {
			t.Errorf("round %d: %v, want %v", i+1, got, w)
		}
	}
	if got := sideOrder(1, false); !slices.Equal(got, []string{"relay", "baseline"}) {
		t.Errorf("round 2 without floor: %v, want [relay baseline]", got)
	}
}
