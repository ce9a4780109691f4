package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/exchange"
)

// floorSteps is the baseline plus what the contract asks for per message
// and nothing else, each step done the cheapest way known: the file read
// once, the name and header checked and the document proved complete
// (exchange.Inspect, as the relay's pickup does), the body stored as a claim
// check (chunk and meta in one round trip), a record carrying the header
// with a Nats-Msg-Id, one channel-state write at ingest and one at delivery
// (revisions remembered, no reads) and one more at ingest, in the same
// round trip, when the message's ReceivedNo acknowledges something new on
// the reverse channel, the body read back by one direct get and
// its sha256 checked, the body deleted after the delivery without being
// waited for. No settle, no folder watching, no framework, no logs, no trace
// events, no metrics, one consumer. What the floor costs over the baseline
// is the contract's price; what the relay costs over the floor is the
// relay's own.
type floorSteps struct {
	pub      jetstream.JetStream // ingest side
	payloads jetstream.Stream    // delivery side's handle
	inState  jetstream.KeyValue
	outState jetstream.KeyValue

	mu    sync.Mutex
	revs  map[string]uint64 // state key → last revision written
	acked map[string]uint64 // reverse channel → ReceivedNo recorded
	dels  sync.WaitGroup
}

// floorRecord is what the floor's record carries instead of the payload.
type floorRecord struct {
	ID   string `json:"id"`
	Plan string `json:"plan"`
	From string `json:"from"`
	To   string `json:"to"`
	No   uint64 `json:"no"`
	Recv uint64 `json:"recv"`
	Size int64  `json:"size"`
	SHA  string `json:"sha256"`
}

// newFloor makes the floor's payload stream and state bucket next to the
// baseline's stream.
func newFloor(ctx context.Context, pub, sub jetstream.JetStream) (*floorSteps, error) {
	if _, err := pub.CreateStream(ctx, jetstream.StreamConfig{
		Name: "FLOOR_PAYLOADS", Subjects: []string{"floor.pay.>"}, Storage: jetstream.FileStorage,
		AllowRollup: true, AllowDirect: true,
	}); err != nil {
		return nil, fmt.Errorf("floor: payload stream: %w", err)
	}
	in, err := pub.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "FLOOR_STATE", Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("floor: state bucket: %w", err)
	}
	out, err := sub.KeyValue(ctx, "FLOOR_STATE")
	if err != nil {
		return nil, fmt.Errorf("floor: state bucket: %w", err)
	}
	payloads, err := sub.Stream(ctx, "FLOOR_PAYLOADS")
	if err != nil {
		return nil, fmt.Errorf("floor: payload stream: %w", err)
	}
	return &floorSteps{pub: pub, payloads: payloads, inState: in, outState: out, revs: map[string]uint64{}, acked: map[string]uint64{}}, nil
}

// ingest takes the file at path of channel c in: check, store, record,
// state. The caller deletes the file.
func (f *floorSteps) ingest(ctx context.Context, path string, c *channel) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	name, err := exchange.ParseName(c.name())
	if err != nil {
		return err
	}
	info, err := exchange.Inspect(bytes.NewReader(data), int64(len(data)), exchange.DefaultLimits(), "")
	if err != nil {
		return fmt.Errorf("floor: %s: %w", path, err)
	}
	if err := name.Check(info.Header); err != nil {
		return fmt.Errorf("floor: %s: %w", path, err)
	}
	h := info.Header
	id := info.SHA256[:32]
	chunk, err := f.pub.PublishAsync("floor.pay.C."+id, data, jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil {
		return err
	}
	meta := nats.NewMsg("floor.pay.M." + id)
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	if meta.Data, err = json.Marshal(map[string]any{"name": id, "size": len(data), "digest": info.SHA256, "chunks": 1}); err != nil {
		return err
	}
	metaAck, err := f.pub.PublishMsgAsync(meta)
	if err != nil {
		return err
	}
	for _, a := range []jetstream.PubAckFuture{chunk, metaAck} {
		select {
		case <-a.Ok():
		case err := <-a.Err():
			return fmt.Errorf("floor: store %s: %w", path, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rec := nats.NewMsg("bench." + c.from + "." + c.to)
	if rec.Data, err = json.Marshal(floorRecord{ID: id, Plan: h.ExchangePlan, From: h.From, To: h.To, No: h.MessageNo, Recv: h.ReceivedNo, Size: info.Size, SHA: info.SHA256}); err != nil {
		return err
	}
	rec.Header.Set(jetstream.MsgIDHeader, h.ExchangePlan+"/"+h.From+"/"+h.To+"/"+info.SHA256)
	if _, err := f.pub.PublishMsg(ctx, rec); err != nil {
		return err
	}
	// The channel's own state and, when it moves, the acknowledgement of
	// the reverse channel: two keys that do not depend on each other,
	// written together in one round trip as the relay's ingest does
	// (pipeline/ingest.go).
	reverse := "acked." + hex.EncodeToString([]byte(c.to+"."+c.from))
	f.mu.Lock()
	moved := h.ReceivedNo > f.acked[reverse]
	if moved {
		f.acked[reverse] = h.ReceivedNo
	}
	f.mu.Unlock()
	var wg sync.WaitGroup
	var ackErr error
	if moved {
		wg.Go(func() { ackErr = f.state(ctx, f.inState, reverse, h.ReceivedNo) })
	}
	err = f.state(ctx, f.inState, "picked."+hex.EncodeToString([]byte(c.from+"."+c.to)), h.MessageNo)
	wg.Wait()
	return errors.Join(err, ackErr)
}

// deliver writes the record m's payload into dir and records it; the
// caller acks m.
func (f *floorSteps) deliver(ctx context.Context, dir string, m jetstream.Msg, fsync bool, placing func(path string, data []byte)) error {
	var rec floorRecord
	if err := json.Unmarshal(m.Data(), &rec); err != nil {
		return err
	}
	p, err := f.payloads.GetLastMsgForSubject(ctx, "floor.pay.C."+rec.ID)
	if err != nil {
		return fmt.Errorf("floor: payload %s: %w", rec.ID, err)
	}
	if sum := sha256.Sum256(p.Data); hex.EncodeToString(sum[:]) != rec.SHA {
		return fmt.Errorf("floor: payload %s: sha256 mismatch", rec.ID)
	}
	if err := writeData(dir, m.Subject(), p.Data, fsync, placing); err != nil {
		return err
	}
	if err := f.state(ctx, f.outState, "delivered."+hex.EncodeToString([]byte(rec.From+"."+rec.To)), rec.No); err != nil {
		return err
	}
	f.dels.Go(func() {
		_ = f.payloads.Purge(ctx, jetstream.WithPurgeSubject("floor.pay.C."+rec.ID))
		_ = f.payloads.Purge(ctx, jetstream.WithPurgeSubject("floor.pay.M."+rec.ID))
	})
	return nil
}

// state writes no as key's state with the revision last written (a
// compare-and-set without a read).
func (f *floorSteps) state(ctx context.Context, kv jetstream.KeyValue, key string, no uint64) error {
	b, err := json.Marshal(struct {
		No uint64 `json:"no"`
	}{no})
	if err != nil {
		return err
	}
	f.mu.Lock()
	rev, ok := f.revs[key]
	f.mu.Unlock()
	if ok {
		rev, err = kv.Update(ctx, key, b, rev)
	} else {
		rev, err = kv.Create(ctx, key, b)
	}
	if err != nil {
		return fmt.Errorf("floor: state %s: %w", key, err)
	}
	f.mu.Lock()
	f.revs[key] = rev
	f.mu.Unlock()
	return nil
}

// wait waits for the deletes still running.
func (f *floorSteps) wait() { f.dels.Wait() }
