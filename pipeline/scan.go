package pipeline

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// eachMsg reads the messages of s on subject from sequence from on, one
// direct get each (no consumer to create and forget), and hands each to
// fn until fn says stop or none is left.
func eachMsg(ctx context.Context, s jetstream.Stream, subject string, from uint64, fn func(*jetstream.RawStreamMsg) (more bool)) error {
	for next := max(from, 1); ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !fn(m) {
			return nil
		}
		next = m.Sequence + 1
	}
}
