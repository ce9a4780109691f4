// Package foldertest holds what the tests of the folder-based pickups
// (folder, dir, ftp) share.
package foldertest

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Memory is an in-memory folder.KeepMemory: the fingerprints `after: keep`
// remembers, which the relay keeps in a KV bucket.
type Memory struct {
	mu sync.Mutex
	m  map[string]string
}

// NewMemory returns a Memory holding fingerprints (key → fingerprint).
func NewMemory(fingerprints map[string]string) *Memory {
	m := &Memory{m: map[string]string{}}
	for k, v := range fingerprints {
		m.m[k] = v
	}
	return m
}

// Recall returns the fingerprint remembered under key, "" if none.
func (z *Memory) Recall(_ context.Context, key string) (string, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.m[key], nil
}

// Remember stores fingerprint under key.
func (z *Memory) Remember(_ context.Context, key, fingerprint string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.m[key] = fingerprint
	return nil
}

// Next waits up to d for a message on ch; nil when none came.
func Next(ch <-chan *message.Message, d time.Duration) *message.Message {
	select {
	case m := <-ch:
		return m
	case <-time.After(d):
		return nil
	}
}
