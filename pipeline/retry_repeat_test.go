package pipeline

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// TestRepeatedRetryByName: a repeated retry of a by-name letter (the first
// queued its record but could not remove the letter) finds that record and
// removes the letter. The record, the channel's last, was taken for "a
// newer message came after it" and the retry refused (found by review).
func TestRepeatedRetryByName(t *testing.T) {
	ctx := context.Background()
	b := testBus(t)
	p := newPipeline(t, retryYAML, b, scriptedEndpoints{"SRC": &scriptedDelivery{}, "DST": &scriptedDelivery{}})
	sha := queueByNameStored(t, b, "a-body")
	h := exchange.Header{Dialect: exchange.DialectName, From: "SRC", To: "DST"}
	id := MessageID(h, sha)
	last, err := b.Exchange.GetLastMsgForSubject(ctx, bus.Subject("", "SRC", "DST"))
	if err != nil {
		t.Fatal(err)
	}
	// The record died at delivery: its letter, as deliverOne writes it.
	if err := (&Dead{b: b}).put(ctx, DeadLetter{Node: "DST", Stage: StageDeliver, Reason: "refused for good", Header: &h,
		MsgID: id, Object: id, Size: int64(len("a-body")), SHA256: sha, FileName: "Message_SRC_DST.zip", StreamSeq: last.Sequence}); err != nil {
		t.Fatal(err)
	}
	ls, err := p.Dead().List(ctx)
	if err != nil || len(ls) != 1 {
		t.Fatalf("dead letters %+v, %v", ls, err)
	}
	seq := ls[0].Seq
	// A first retry queued its record (as Retry publishes it) and could
	// not remove the letter (Dead.DeleteMsg failed: "queued as ... but not
	// removed").
	rec := message.NewMessage(id+retrySuffix+strconv.FormatUint(seq, 10), nil)
	exchange.SetHeader(rec, h)
	rec.Metadata.Set(exchange.MetaFileName, "Message_SRC_DST.zip")
	rec.Metadata.Set(exchange.MetaSize, strconv.Itoa(len("a-body")))
	rec.Metadata.Set(exchange.MetaSHA256, sha)
	rec.Metadata.Set(exchange.MetaObject, id)
	rec.Metadata.Set(exchange.MetaSource, "dead:"+strconv.FormatUint(seq, 10))
	rec.Metadata.Set(exchange.MetaNode, "DST")
	if _, _, err := publishRecord(ctx, b.JS, bus.Subject("", "SRC", "DST"), rec); err != nil {
		t.Fatal(err)
	}
	// The operator runs the retry again, as the error told.
	if _, err := p.Retry(ctx, seq); err != nil {
		t.Fatalf("repeated retry of a by-name letter whose first retry queued its record: %v (errors.Is ErrCannotRetry %v), want it to find its record queued and remove the letter",
			err, errors.Is(err, ErrCannotRetry))
	}
}
