package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// serialKV is a KV bucket whose compare-and-set writes (Create, Update) a
// cluster serializes also where its own revision check does not:
// nats-server before 2.9.21 checks a write's expected revision on the
// stream leader before the write goes through consensus, so two writes made
// on the same revision at nearly the same time both succeed, the second
// undoing the first (nats-io/nats-server#4320; Debian 12 ships 2.9.10, and
// there three relays counting on one channel lost more than half their
// counts). Each write also carries a message id naming the key and the
// revision it was made on: the leader's duplicate check does cover writes
// still in flight, so the second one is answered as a duplicate, which is
// the revision mismatch it is. On a fixed server the id changes nothing.
type serialKV struct {
	jetstream.KeyValue
	js      jetstream.JetStream
	subject string // "$KV.<bucket>."
}

// newSerialKV wraps kv, a bucket of js's own account and domain.
func newSerialKV(js jetstream.JetStream, kv jetstream.KeyValue) serialKV {
	return serialKV{KeyValue: kv, js: js, subject: "$KV." + kv.Bucket() + "."}
}

// Update writes value over revision rev of key, as jetstream's Update.
func (kv serialKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	n, err := kv.write(ctx, key, value, rev, key+"@"+strconv.FormatUint(rev, 10))
	if errors.Is(err, errDuplicate) || isWrongLastSeq(err) {
		return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
	}
	return n, err
}

// Create writes key when it holds no value (never written, deleted,
// purged or expired), as jetstream's Create.
func (kv serialKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if len(opts) > 0 {
		return kv.KeyValue.Create(ctx, key, value, opts...)
	}
	n, err := kv.write(ctx, key, value, 0, key+"@0")
	if errors.Is(err, errDuplicate) {
		// An id is remembered for the stream's duplicate window: a key
		// created, then expired or purged within it, is free again.
		if _, gerr := kv.KeyValue.Get(ctx, key); errors.Is(gerr, jetstream.ErrKeyNotFound) {
			n, err = kv.write(ctx, key, value, 0, key+"@0@"+nuid.Next())
		}
	}
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, errDuplicate) && !isWrongLastSeq(err) {
		return 0, err
	}
	// The key holds a value, or a delete or purge marker a create writes
	// over (what jetstream's Create does, by compare-and-set on the marker).
	stream, gerr := kv.js.Stream(ctx, "KV_"+kv.Bucket())
	var m *jetstream.RawStreamMsg
	if gerr == nil {
		m, gerr = stream.GetLastMsgForSubject(ctx, kv.subject+key)
	}
	if gerr == nil {
		if op := m.Header.Get(kvOperation); op == kvDelete || op == kvPurge {
			return kv.Update(ctx, key, value, m.Sequence)
		}
	}
	return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyExists)
}

// The KV protocol's marker of a deleted or purged key (ADR-8).
const (
	kvOperation = "KV-Operation"
	kvDelete    = "DEL"
	kvPurge     = "PURGE"
)

// errDuplicate is a write answered as a duplicate: one made on the same
// revision was written first.
var errDuplicate = errors.New("another write was made on the same revision")

// write publishes value to key if its last revision is rev, under msgID.
func (kv serialKV) write(ctx context.Context, key string, value []byte, rev uint64, msgID string) (uint64, error) {
	m := &nats.Msg{Subject: kv.subject + key, Data: value, Header: nats.Header{}}
	ack, err := kv.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgID(msgID))
	if err != nil {
		return 0, err
	}
	if ack.Duplicate {
		return 0, errDuplicate
	}
	return ack.Sequence, nil
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
