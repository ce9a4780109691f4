// Package logtest holds a log sink for tests that look at what the code
// under test logged.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer collects log lines; the goroutines of the code under test (and a
// client library's callbacks) may write it at once while the test reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
