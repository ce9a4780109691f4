package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
	"github.com/relay1c/relay/exchange"
)

// Retry puts a dead letter back on its way: a message that was valid is
// queued again for delivery; a file refused at pickup is inspected again
// (useful after routing.yaml gained its node) and queued if it now passes.
// The dead letter is removed only once the message is queued.
func (p *Pipeline) Retry(ctx context.Context, seq uint64) (string, error) {
	l, err := p.dead.Get(ctx, seq)
	if err != nil {
		return "", err
	}
	if l.Object == "" {
		return "", notRetriable{fmt.Errorf("dead letter %d: its payload was not kept; it cannot be retried", seq)}
	}
	// A message that died because its payload was gone names it all the
	// same: queued again, it would only die again.
	if l.SHA256 != "" {
		has, err := p.b.HasPayload(ctx, l.Object, l.Size, l.SHA256)
		if err != nil {
			return "", fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if !has {
			return "", notRetriable{fmt.Errorf("dead letter %d: its payload %s is gone; it cannot be retried", seq, l.Object)}
		}
	}
	h, size, sha, obj := l.Header, l.Size, l.SHA256, l.Object
	name, nameErr := exchange.ParseName(l.FileName)
	format := exchange.FormatXML
	if nameErr == nil {
		format = name.Format
	}
	if l.Stage == StagePickup || h == nil {
		info, err := p.reinspect(ctx, l, name, nameErr)
		if errors.Is(err, ErrCannotRetry) {
			return "", fmt.Errorf("dead letter %d: still not a valid message: %w", seq, err)
		}
		if err != nil {
			return "", fmt.Errorf("dead letter %d: %w", seq, err)
		}
		h, size, sha, format = &info.Header, info.Size, info.SHA256, info.Format
		obj = MessageID(info.Header, sha)
	}
	if reason := p.routeProblem(*h); reason != "" {
		return "", notRetriable{fmt.Errorf("dead letter %d: still cannot be routed: %s", seq, reason)}
	}
	if h.ByName() {
		newer, err := p.newerByName(ctx, l, *h, retryID(MessageID(*h, sha), seq))
		if err != nil {
			return "", fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if newer {
			return "", notRetriable{fmt.Errorf("dead letter %d: a newer message of %s came after it, and without a number (routed by its file name) the retry would be delivered over it; drop it", seq, channelName(*h))}
		}
	}
	if obj != l.Object {
		if err := p.copyObject(ctx, l.Object, obj, size, sha); err != nil {
			return "", err
		}
	}
	id := MessageID(*h, sha)
	rec := message.NewMessage(retryID(id, seq), nil)
	exchange.SetHeader(rec, *h)
	rec.Metadata.Set(exchange.MetaFileName, fileNameFor(l.FileName, name, nameErr, *h, format))
	rec.Metadata.Set(exchange.MetaSize, strconv.FormatInt(size, 10))
	rec.Metadata.Set(exchange.MetaSHA256, sha)
	rec.Metadata.Set(exchange.MetaObject, obj)
	rec.Metadata.Set(exchange.MetaSource, "dead:"+strconv.FormatUint(seq, 10))
	rec.Metadata.Set(exchange.MetaNode, l.Node)
	// Retries of dead letters are rare: they publish on the main connection.
	dup, rseq, err := publishRecord(ctx, p.b.JS, bus.Subject(h.ExchangePlan, h.From, h.To), rec)
	if err != nil {
		return "", fmt.Errorf("dead letter %d: publish: %w", seq, err)
	}
	// A repeated retry (the first could not remove the dead letter, or
	// lost its publish's answer) finds its record queued already: counted
	// once (taken counts a record the stream had only if no count has seen
	// it). Counted as a pickup is, so that its delivery does not count it
	// again (a letter that died at pickup never raised the picked-up
	// number).
	p.laneOn(p.b, p.log).taken(ctx, *h, p.states.now(), !dup, rseq)
	if obj != l.Object {
		_ = p.b.DeletePayload(ctx, l.Object)
	}
	// Told and acknowledged also on a repeated retry: the first may have
	// stopped before either.
	recordEvent(p.b.Conn, p.log, Event{Step: StepRetried, MsgID: id, File: rec.Metadata.Get(exchange.MetaFileName), Node: l.Node,
		Channel: channelName(*h), No: h.MessageNo, Size: size, SHA256: sha, Detail: fmt.Sprintf("dead letter %d sent on again as %s", seq, ReadableID(rec.UUID))})
	// Its ReceivedNo acknowledges the reverse channel, as at ingest: a
	// message that died at pickup was never read that far (one that died
	// later was, and changes nothing now).
	p.laneOn(p.b, p.log).acknowledge(ctx, *h, p.states.now(), id, rec.Metadata.Get(exchange.MetaFileName))
	if err := p.b.Dead.DeleteMsg(ctx, seq); err != nil {
		return id, fmt.Errorf("dead letter %d: queued as %s but not removed: %w", seq, id, err)
	}
	return id, nil
}

// retrySuffix and the dead letter's number name a retried message's
// record: the stream's duplicate window must not drop it as the original.
const retrySuffix = "/retry-"

// newerByName says a message of h's channel (routed by name: arrival is
// its order) was queued after the dead letter l's. The retry queues l's at
// the end of the stream, where it would count as the newest. Known by l's
// place in the stream when it died at delivery; else by the channel's last
// pickup after l died.
func (p *Pipeline) newerByName(ctx context.Context, l DeadLetter, h exchange.Header, own string) (bool, error) {
	st, err := p.states.Get(ctx, h.ExchangePlan, h.From, h.To)
	if err != nil {
		return false, err
	}
	if l.StreamSeq == 0 {
		return st.LastPickupAt.After(l.Time), nil
	}
	if st.NameSeq > l.StreamSeq {
		return true, nil
	}
	last, err := p.b.Exchange.GetLastMsgForSubject(ctx, bus.Subject(h.ExchangePlan, h.From, h.To))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("records of %s: %w", channelName(h), err)
	}
	// An earlier retry of this letter that could not remove it queued
	// this very message: not a newer one.
	return last.Sequence > l.StreamSeq && last.Header.Get("_watermill_message_uuid") != own, nil
}

// retryID names the record a retry of dead letter seq queues for the
// message id.
func retryID(id string, seq uint64) string { return id + retrySuffix + strconv.FormatUint(seq, 10) }

// fileNameFor keeps the original name file (parsed as n, or nerr) when it
// is a valid one for the message (header and format), else derives it from
// the header and format.
func fileNameFor(file string, n exchange.Name, nerr error, h exchange.Header, format exchange.Format) string {
	if nerr == nil && n.Check(h) == nil && n.Format == format {
		return file
	}
	return exchange.FileName(h.From, h.To, format)
}

// ErrCannotRetry marks a Retry refused for what the dead letter is (its
// payload was not kept, it is still not a valid message, it still cannot be
// routed): repeating the retry changes nothing until that is fixed. Other
// errors of Retry are JetStream's or the disk's, and a repeat may succeed.
var ErrCannotRetry = errors.New("cannot be retried")

// notRetriable is an error of Retry that is ErrCannotRetry too; its text
// is the wrapped error's.
type notRetriable struct{ error }

func (e notRetriable) Unwrap() []error { return []error{e.error, ErrCannotRetry} }

// reinspect spools a dead payload to disk (a zip needs random access) and
// inspects it again; name is its file name parsed (nerr: not a valid one).
func (p *Pipeline) reinspect(ctx context.Context, l DeadLetter, name exchange.Name, nerr error) (exchange.Info, error) {
	spool := filepath.Join(p.cfg.Resolve(p.cfg.Relay.DataDir), "spool")
	if err := os.MkdirAll(spool, 0o750); err != nil {
		return exchange.Info{}, err
	}
	f, err := os.CreateTemp(spool, "retry-*")
	if err != nil {
		return exchange.Info{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	r, err := p.b.OpenPayload(ctx, l.Object)
	if err != nil {
		return exchange.Info{}, fmt.Errorf("payload %s: %w", l.Object, err)
	}
	n, err := io.Copy(f, r)
	r.Close()
	if err != nil {
		return exchange.Info{}, fmt.Errorf("payload %s: %w", l.Object, err)
	}
	// As at pickup: a password-protected zip is read with its channel's
	// passwords (configured since, perhaps: the reason it was dead).
	var info exchange.Info
	if nerr != nil {
		info, err = exchange.InspectWith(f, n, p.opts.Limits, nil)
	} else {
		read := name.ReadBy(l.Node, p.cfg.IsNode)
		info, err = exchange.InspectFile(f, n, p.opts.Limits, name, read.Sealed(), p.cfg.ZipPasswords(read.From, read.To))
	}
	if exchange.IsVerdict(err) {
		return info, notRetriable{err}
	}
	return info, err
}

// copyObject copies a payload of size bytes and sha256 sha (hex) to a new
// name within the object store.
func (p *Pipeline) copyObject(ctx context.Context, from, to string, size int64, sha string) error {
	r, err := p.b.OpenPayload(ctx, from)
	if err != nil {
		return fmt.Errorf("payload %s: %w", from, err)
	}
	defer r.Close()
	if err := putExact(ctx, p.b, to, size, sha, r); err != nil {
		return fmt.Errorf("payload %s: copy: %w", to, err)
	}
	return nil
}
