// Package trouble keeps what is wrong with an endpoint right now (cannot
// connect, wrong password, folder missing), for `relay status` and the
// API: one line, and since when it has been so.
package trouble

import (
	"errors"
	"sync"
	"time"

	"github.com/relay1c/relay/exchange"
)

// Last is an endpoint's current trouble; the zero value is ready to use and
// safe for concurrent use. Adapters embed it, which gives them the
// LastError method the pipeline reads.
type Last struct {
	mu  sync.Mutex
	msg string
	at  time.Time
}

// Set records the outcome of the endpoint's latest attempt: nil clears the
// trouble; the same message again keeps its first time. A stale message
// (the destination holds a newer one) is not the endpoint's trouble; one
// found in place (the destination holds it already), or held for an
// unread one there (exchange.ErrUnread), is its success: it answered.
func (l *Last) Set(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil, errors.Is(err, exchange.ErrInPlace), errors.Is(err, exchange.ErrUnread):
		l.msg, l.at = "", time.Time{}
	case errors.Is(err, exchange.ErrStale):
	case err.Error() != l.msg:
		l.msg, l.at = err.Error(), time.Now()
	}
}

// LastError is the current trouble and since when, "" when there is none.
func (l *Last) LastError() (string, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msg, l.at
}
