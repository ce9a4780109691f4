package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// TestDropper: deletes run behind the caller; a full queue makes the caller
// delete itself rather than wait or lose one; close runs every queued
// delete before it returns.
func TestDropper(t *testing.T) {
	var mu sync.Mutex
	deleted := map[string]bool{}
	gate := make(chan struct{})
	d := newDropper(func(_ context.Context, name string) error {
		if name == "first" {
			<-gate // holds the dropper's goroutine
		}
		mu.Lock()
		deleted[name] = true
		mu.Unlock()
		return nil
	}, slog.New(slog.DiscardHandler))

	start := time.Now()
	d.drop("first")
	for i := range dropQueue + 5 {
		d.drop(fmt.Sprint(i)) // the last ones find the queue full
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("drop waited for the queued deletes")
	}
	mu.Lock()
	inline := len(deleted)
	mu.Unlock()
	if inline == 0 {
		t.Fatal("a full queue did not make the caller delete")
	}
	close(gate)
	if err := d.close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(deleted) != dropQueue+6 {
		t.Fatalf("%d deleted after close, want %d", len(deleted), dropQueue+6)
	}
}

// TestDropAfterClose: a delivery the router left running past its close
// finishes after the pipeline closed the dropper: its drop sent on the
// closed queue (local CI: the race detector; a panic without it). It
// deletes at once instead.
func TestDropAfterClose(t *testing.T) {
	var mu sync.Mutex
	var deleted []string
	d := newDropper(func(_ context.Context, name string) error {
		mu.Lock()
		defer mu.Unlock()
		deleted = append(deleted, name)
		return nil
	}, slog.New(slog.DiscardHandler))
	if err := d.close(); err != nil {
		t.Fatal(err)
	}
	d.drop("late")
	mu.Lock()
	defer mu.Unlock()
	if len(deleted) != 1 || deleted[0] != "late" {
		t.Fatalf("deleted %v after close, want [late]", deleted)
	}
}
