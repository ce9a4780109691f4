package trouble

import (
	"errors"
	"fmt"
	"testing"

	"github.com/relay1c/relay/exchange"
)

func TestLast(t *testing.T) {
	var l Last
	if msg, at := l.LastError(); msg != "" || !at.IsZero() {
		t.Fatalf("zero value: %q %v", msg, at)
	}
	l.Set(errors.New("connect: refused"))
	msg, first := l.LastError()
	if msg != "connect: refused" || first.IsZero() {
		t.Fatalf("after an error: %q %v", msg, first)
	}
	l.Set(errors.New("connect: refused"))
	if _, at := l.LastError(); !at.Equal(first) {
		t.Errorf("the same error again moved the time from %v to %v", first, at)
	}
	l.Set(fmt.Errorf("holds No 9: %w", exchange.ErrStale))
	if msg, _ := l.LastError(); msg != "connect: refused" {
		t.Errorf("a stale message replaced the trouble: %q", msg)
	}
	l.Set(errors.New("login: 530"))
	if msg, _ := l.LastError(); msg != "login: 530" {
		t.Errorf("a new error: %q", msg)
	}
	l.Set(nil)
	if msg, at := l.LastError(); msg != "" || !at.IsZero() {
		t.Errorf("after success: %q %v", msg, at)
	}
	l.Set(errors.New("login: 530"))
	l.Set(fmt.Errorf("holds No 9 already: %w", exchange.ErrInPlace))
	if msg, at := l.LastError(); msg != "" || !at.IsZero() {
		t.Errorf("after a message found in place (a success): %q %v", msg, at)
	}
	// A message held for an unread one there: the endpoint answered.
	l.Set(errors.New("login: 530"))
	l.Set(&exchange.UnreadError{Where: "Message_A_B.xml", Node: "B", Have: 2, Acked: 1, No: 3})
	if msg, at := l.LastError(); msg != "" || !at.IsZero() {
		t.Errorf("after a message held for an unread one (the endpoint answered): %q %v", msg, at)
	}
}
