package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// Memory is the KV-backed memory of pickups (`after: keep`, mail sets
// taken whole), shared by replicas: a folder.Memory for mail, a
// folder.KeepMemory for dir and ftp.
type Memory struct{ kv jetstream.KeyValue }

// NewMemory wraps the EXCHANGE_TAKEN bucket.
func NewMemory(kv jetstream.KeyValue) *Memory { return &Memory{kv: kv} }

// Seen reports whether key was taken with exactly this fingerprint.
func (m *Memory) Seen(ctx context.Context, key, fingerprint string) (bool, error) {
	e, err := m.kv.Get(ctx, bus.Token(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pickup memory %s: %w", key, err)
	}
	return string(e.Value()) == fingerprint, nil
}

// Recall returns the fingerprint remembered under key, "" if none.
func (m *Memory) Recall(ctx context.Context, key string) (string, error) {
	e, err := m.kv.Get(ctx, bus.Token(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("pickup memory %s: %w", key, err)
	}
	return string(e.Value()), nil
}

// Remember stores the fingerprint of what was taken under key.
func (m *Memory) Remember(ctx context.Context, key, fingerprint string) error {
	if _, err := m.kv.Put(ctx, bus.Token(key), []byte(fingerprint)); err != nil {
		return fmt.Errorf("pickup memory %s: %w", key, err)
	}
	return nil
}
