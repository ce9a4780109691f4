// Package pull is the delivery of nodes that can only make outbound HTTP
// requests (mobile and offline 1C clients): a message waits in the relay
// until the node fetches it (GET /api/v1/nodes/{code}/messages/next) and
// acknowledges it (POST .../messages/{id}/ack). The delivery counts as done
// only at the acknowledgement; a fetched message that is not acknowledged
// within the lease is offered again.
package pull

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Config is the value under `http_pull:`.
type Config struct {
	// Lease is how long a fetched message is reserved for the client that
	// fetched it; unacknowledged after that, it is offered again (default 5m).
	Lease config.Duration `yaml:"lease"`
}

// DefaultLease is the lease when none is configured.
const DefaultLease = 5 * time.Minute

// Decode reads the value under `http_pull:` ({} or a mapping).
func Decode(n *yaml.Node) (Config, error) {
	var c Config
	if n.Kind == yaml.MappingNode {
		if err := config.DecodeOptions(n, &c); err != nil {
			return c, err
		}
	} else if n.Kind != 0 && !(n.Kind == yaml.ScalarNode && (n.Value == "" || n.Tag == "!!null")) {
		return c, fmt.Errorf("line %d: want {} or a mapping with lease:", n.Line)
	}
	if c.Lease == 0 {
		c.Lease = config.Duration(DefaultLease)
	}
	return c, nil
}

// Validate reports every problem of the options, each prefixed with its key.
func (c Config) Validate() []error {
	if c.Lease.Std() < time.Second {
		return []error{fmt.Errorf("lease: %s is below 1s", c.Lease.Std())}
	}
	return nil
}

// Offer is a message handed to a pulling client.
type Offer struct {
	// ID names the offer in the acknowledgement URL: stable for the message
	// (the same after a redelivery), URL-safe.
	ID     string
	Name   string
	Header exchange.Header
	Size   int64
	SHA256 string
	// LeaseUntil is when the offer goes back to the queue unless acknowledged.
	LeaseUntil time.Time
	// Open streams the file; each call opens a fresh reader.
	Open func(ctx context.Context) (io.ReadCloser, error)
}

type offer struct {
	Offer
	leasedUntil time.Time
	acked       chan struct{}
	// failed is closed when Release found the stored file damaged or
	// gone; err says how.
	failed chan struct{}
	err    error
	// sent says a transfer of it to the node ended whole (Sent): only
	// then may the node acknowledge it. sending says a transfer handed
	// out (Next) has not ended yet (Sent, Release).
	sent    bool
	sending bool
}

// Mailbox is a node's http_pull delivery, a Watermill Publisher: Publish
// parks the message until a client acknowledges it (or the relay stops).
type Mailbox struct {
	node  string
	lease time.Duration
	log   *slog.Logger
	now   func() time.Time

	// polled and elsewhere coordinate relay replicas (see Share).
	polled    func()
	elsewhere func() bool
	// superseded says a newer message of a parked one's channel is
	// queued (see Supersede).
	superseded func(m *message.Message) bool

	mu     sync.Mutex
	offers []*offer // in arrival order
	// withdrawn holds, for a lease, when park gave up on an offer (the
	// relay stopping, the message's context ended, handed back): a node's
	// late acknowledgement then hears that the message is offered again,
	// not that it is unknown.
	withdrawn map[string]time.Time
	// ended is closed (and made anew) when a transfer ends: Sent, Release.
	ended chan struct{}
	// ackWait: the package's ackWait (tests lengthen it).
	ackWait time.Duration
	closing chan struct{}
	once    sync.Once
}

var _ message.Publisher = (*Mailbox)(nil)

// NewMailbox makes the pull delivery of node.
func NewMailbox(node string, cfg Config, log *slog.Logger) *Mailbox {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Mailbox{node: node, lease: cfg.Lease.Std(), log: log.With("node", node, "adapter", "http_pull"), now: time.Now,
		withdrawn: map[string]time.Time{}, ended: make(chan struct{}), ackWait: ackWait, closing: make(chan struct{})}
}

// ErrUnknownOffer is returned by Ack for an id that is not waiting.
var ErrUnknownOffer = errors.New("no such message waiting")

// ErrNotSent is returned by Ack for a waiting message no transfer ever
// handed over whole: the node cannot hold the file (found by review: a
// node that acked after its download broke off lost the message).
var ErrNotSent = errors.New("never sent whole: fetch it again")

// ErrWithdrawn is returned by Ack for a message that was waiting but is no
// longer offered here (the relay is stopping, or the message went back to
// JetStream): it is offered again, and the node must fetch it again.
var ErrWithdrawn = errors.New("no longer offered here: it is offered again")

// OfferID is the acknowledgement id of a message with the given relay id.
func OfferID(messageID string) string {
	sum := sha256.Sum256([]byte(messageID))
	return hex.EncodeToString(sum[:16])
}

// Publish parks each message until a client acknowledges it; the topic is
// ignored.
func (mb *Mailbox) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if err := mb.park(m); err != nil {
			return err
		}
	}
	return nil
}

func (mb *Mailbox) park(m *message.Message) error {
	d, err := exchange.OpenDelivery(m.Context(), m, "http_pull "+mb.node)
	if err != nil {
		return err
	}
	d.Body.Close() // each fetch opens its own
	o := &offer{
		Offer: Offer{
			ID: OfferID(m.UUID), Name: d.Name, Header: d.Header, Size: d.Size, SHA256: d.SHA256,
			Open: func(ctx context.Context) (io.ReadCloser, error) { return exchange.Body(ctx, m) },
		},
		acked:  make(chan struct{}),
		failed: make(chan struct{}),
	}
	mb.mu.Lock()
	if mb.find(o.ID) != nil {
		mb.mu.Unlock()
		return fmt.Errorf("http_pull %s: %s is already waiting", mb.node, d.Name)
	}
	mb.offers = append(mb.offers, o)
	delete(mb.withdrawn, o.ID)
	mb.mu.Unlock()
	mb.log.Debug("waiting for the node to pull", "message_id", m.UUID, "file", d.Name, "id", o.ID)
	var check <-chan time.Time
	if mb.elsewhere != nil || mb.superseded != nil {
		t := time.NewTicker(handBackCheck)
		defer t.Stop()
		check = t.C
	}
	// The outcome is decided once, under the lock: either Ack takes the
	// offer (the node heard "acknowledged": delivered) or withdraw does (a
	// later Ack fails with ErrWithdrawn), never both.
	taken := func() error { // by Ack, or by Release as damaged
		select {
		case <-o.failed:
			return fmt.Errorf("http_pull %s: %s: %w", mb.node, d.Name, o.err)
		default:
		}
		mb.log.Debug("delivered: the node acknowledged", "message_id", m.UUID, "file", d.Name, "id", o.ID)
		return nil
	}
	for {
		select {
		case <-o.acked:
			return taken()
		case <-o.failed:
			return taken()
		case <-m.Context().Done():
			if !mb.withdraw(o, false) {
				return taken()
			}
			return fmt.Errorf("http_pull %s: %s: %w", mb.node, d.Name, m.Context().Err())
		case <-mb.closing:
			if !mb.withdraw(o, false) {
				return taken()
			}
			return fmt.Errorf("http_pull %s: %s: %w", mb.node, d.Name, exchange.ErrStopping)
		case <-check:
			// Not withdrawn: a client holds it, or Ack took it just now
			// (o.acked is closed).
			if mb.elsewhere != nil && mb.elsewhere() && mb.withdraw(o, true) {
				return fmt.Errorf("http_pull %s: %s: the node pulls from another replica: %w", mb.node, d.Name, exchange.ErrNotTaken)
			}
			if mb.superseded != nil && mb.superseded(m) && mb.withdraw(o, true) {
				return fmt.Errorf("http_pull %s: %s: a newer message of its channel is queued: %w", mb.node, d.Name, exchange.ErrNotTaken)
			}
		}
	}
}

// handBackCheck is how often a parked message asks whether its node pulls
// from another replica, and whether it was superseded.
const handBackCheck = time.Second

// Share coordinates the mailboxes of one node in several relay replicas:
// the node pulls from one of them (whichever its HTTP requests reach), but
// any replica may take the node's message from JetStream. polled is called
// on every pull here (the pipeline records it where all replicas see it);
// elsewhere reports that the node has lately been pulling from another
// replica, and a message no client holds then leaves this mailbox (Publish
// returns exchange.ErrNotTaken) to be offered again, to any replica. Set
// before use.
func (mb *Mailbox) Share(polled func(), elsewhere func() bool) {
	mb.polled, mb.elsewhere = polled, elsewhere
}

// Supersede makes a parked message that no client holds leave the
// mailbox (Publish returns exchange.ErrNotTaken: the pipeline offers it
// again and drops it as superseded) once superseded says a newer message
// of its channel is queued: mode latest. Without it a node back after a
// week got the week-old message first, and one it could not load held
// the newest back for good (found by review). Set before use.
func (mb *Mailbox) Supersede(superseded func(m *message.Message) bool) { mb.superseded = superseded }

// withdraw takes o out of the mailbox, unless Ack took it first or, with
// unleased, a client holds it now; a later Ack of it fails with
// ErrWithdrawn.
func (mb *Mailbox) withdraw(o *offer, unleased bool) bool {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	now := mb.now()
	if unleased && now.Before(o.leasedUntil) {
		return false
	}
	if !slices.Contains(mb.offers, o) {
		return false // Ack took it first
	}
	mb.remove(o)
	for id, at := range mb.withdrawn {
		if now.Sub(at) > mb.lease {
			delete(mb.withdrawn, id)
		}
	}
	mb.withdrawn[o.ID] = now
	// An acknowledgement waiting for the transfer's end hears now that the
	// message went (found by review: it waited out ackWait).
	mb.transferEnded(o)
	return true
}

// Next leases the oldest waiting message that no client holds, false when
// there is none.
func (mb *Mailbox) Next() (Offer, bool) {
	if mb.polled != nil {
		mb.polled()
	}
	mb.mu.Lock()
	defer mb.mu.Unlock()
	now := mb.now()
	for _, o := range mb.offers {
		if !now.Before(o.leasedUntil) {
			o.leasedUntil = now.Add(mb.lease)
			// A transfer holds the lease while it runs (the API renews
			// it): one whose lease lapsed is over or abandoned.
			o.sending = true
			out := o.Offer
			out.LeaseUntil = o.leasedUntil
			return out, true
		}
	}
	return Offer{}, false
}

// Release ends the lease of the waiting message id, which the API could not
// hand over because of err, so that the next request gets it rather than
// wait for the lease. A stored file found damaged or gone (err permanent,
// or the payload not found) is not offered again: its delivery ends with
// err, which the pipeline makes a dead letter. Offered first again, it
// would come back on every fetch and hold up the node's whole mailbox.
func (mb *Mailbox) Release(id string, err error) {
	final := exchange.IsPermanent(err) || errors.Is(err, jetstream.ErrObjectNotFound)
	mb.mu.Lock()
	defer mb.mu.Unlock()
	o := mb.find(id)
	if o == nil {
		return
	}
	mb.transferEnded(o)
	if final {
		mb.remove(o)
		o.err = err
		close(o.failed)
		mb.log.Warn("stored file cannot be handed to the node: its delivery fails", "file", o.Name, "id", id, "err", err)
	} else {
		o.leasedUntil = time.Time{}
	}
}

// Touch starts the lease of the waiting message id again from now: the API
// holds the lease of a message while it is still sending it, so that the
// lease counts from the end of the transfer, not from its start.
func (mb *Mailbox) Touch(id string) {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if o := mb.find(id); o != nil {
		o.leasedUntil = mb.now().Add(mb.lease)
	}
}

// Sent records that a transfer of the waiting message id ended whole, and
// starts its lease again from now (Touch).
func (mb *Mailbox) Sent(id string) {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if o := mb.find(id); o != nil {
		o.sent = true
		o.leasedUntil = mb.now().Add(mb.lease)
		mb.transferEnded(o)
	}
}

// find is the waiting offer id, nil when none; mb.mu is held.
func (mb *Mailbox) find(id string) *offer {
	if i := slices.IndexFunc(mb.offers, func(o *offer) bool { return o.ID == id }); i >= 0 {
		return mb.offers[i]
	}
	return nil
}

// remove takes o out of the waiting offers; mb.mu is held.
func (mb *Mailbox) remove(o *offer) {
	mb.offers = slices.DeleteFunc(mb.offers, func(x *offer) bool { return x == o })
}

// transferEnded counts the end of a transfer of o (or of o itself, taken
// out) and wakes the acknowledgements waiting for it; mb.mu is held.
func (mb *Mailbox) transferEnded(o *offer) {
	o.sending = false
	close(mb.ended)
	mb.ended = make(chan struct{})
}

// ackWait bounds how long an acknowledgement waits for the end of a
// transfer of its message still running here: the node may have the last
// byte before the API has seen its write return.
const ackWait = 5 * time.Second

// Ack completes the delivery of the waiting message id (also after its
// lease ran out, as long as it is still waiting). A message that was
// waiting but has been withdrawn (see ErrWithdrawn) is not acknowledged:
// it is offered again; nor is one no transfer handed over whole
// (ErrNotSent).
func (mb *Mailbox) Ack(id string) error {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	for deadline := time.Now().Add(mb.ackWait); ; {
		o := mb.find(id)
		wait := time.Until(deadline)
		if o == nil || o.sent || !o.sending || wait <= 0 {
			break
		}
		// A transfer of it is still ending here (the node read its last
		// byte before the API saw the write return): its end decides.
		ended := mb.ended
		mb.mu.Unlock()
		select {
		case <-ended:
		case <-time.After(wait):
		}
		mb.mu.Lock()
	}
	if o := mb.find(id); o != nil {
		if !o.sent {
			return fmt.Errorf("http_pull %s: %s: %w", mb.node, id, ErrNotSent)
		}
		mb.remove(o)
		close(o.acked)
		return nil
	}
	if _, ok := mb.withdrawn[id]; ok {
		return fmt.Errorf("http_pull %s: %s: %w", mb.node, id, ErrWithdrawn)
	}
	return fmt.Errorf("http_pull %s: %s: %w", mb.node, id, ErrUnknownOffer)
}

// Waiting is how many messages wait for the node.
func (mb *Mailbox) Waiting() int {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return len(mb.offers)
}

// Close makes parked deliveries return (they are offered again later).
func (mb *Mailbox) Close() error {
	mb.once.Do(func() { close(mb.closing) })
	return nil
}
