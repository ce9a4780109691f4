package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// Channel is the state of one exchange channel (plan, from → to), kept in
// the EXCHANGE_CHANNELS bucket so every relay replica and `relay status` see
// the same numbers.
type Channel struct {
	Plan string `json:"plan"`
	From string `json:"from"`
	To   string `json:"to"`
	// PickedNo is the highest MessageNo picked up from From's outbox.
	PickedNo uint64 `json:"picked_no"`
	// DeliveredNo is the highest MessageNo written to To's inbox, or
	// found there when a delivery was refused as stale.
	DeliveredNo uint64 `json:"delivered_no"`
	// AckedNo is the highest ReceivedNo To sent back on the reverse channel.
	AckedNo uint64 `json:"acked_no"`
	// Queued and Resolved count messages taken in and messages finished
	// (delivered, dropped, dead, or handed to the relay serving To); their
	// difference is what is waiting.
	Queued   uint64 `json:"queued"`
	Resolved uint64 `json:"resolved"`
	// Dropped counters (DESIGN.md §6.3).
	Duplicates uint64 `json:"duplicates"`
	Stale      uint64 `json:"stale"`
	Superseded uint64 `json:"superseded"`
	Dead       uint64 `json:"dead"`

	// HandedNo is the highest MessageNo another relay (HandedTo, the one
	// serving To) fetched from here; HandedSeq is that record's stream
	// sequence, so none is counted twice.
	HandedNo     uint64    `json:"handed_no,omitempty"`
	HandedTo     string    `json:"handed_to,omitempty"`
	HandedSeq    uint64    `json:"handed_seq,omitempty"`
	LastHandedAt time.Time `json:"last_handed_at,omitzero"`

	// NameSeq is the EXCHANGE stream sequence of the last resolved record
	// of a channel routed by file name (no numbers): later records go
	// after it, older ones are stale.
	NameSeq uint64 `json:"name_seq,omitempty"`

	// DeadNo is the number of a message that died at delivery on a
	// sequential channel: the numbers after it wait until it is retried
	// and delivered, or dropped by the operator. 0 when none waits.
	DeadNo uint64 `json:"dead_no,omitempty"`
	// DroppedNo is the highest number the operator dropped as a dead
	// letter (`relay dead drop`): a sequential channel goes on past it as
	// past a delivered one.
	DroppedNo uint64 `json:"dropped_no,omitempty"`
	// DroppedAhead are numbers the operator dropped past a lower one the
	// channel still waits for (a dead letter, a gap): passed once the
	// channel gets to each (settle).
	DroppedAhead []uint64 `json:"dropped_ahead,omitempty"`

	// LastMsgID is the message id of the record resolved last, so that
	// JetStream offering it again (its ack was lost) does not count it twice.
	LastMsgID string `json:"last_msg_id,omitempty"`
	// RecentSeqs are the stream sequences of the records resolved last
	// (recentSeqs of them), for the same when others were resolved since.
	RecentSeqs []uint64 `json:"recent_seqs,omitempty"`
	// Uncounted are the stream sequences of records the delivery counted
	// as queued when it resolved them (recentSeqs of them): their pickup's
	// count had not come, as when the relay stopped between the publish and
	// it, or not yet. A count that still comes for one of them is skipped.
	Uncounted []uint64 `json:"uncounted,omitempty"`
	// TakenSeq is the stream sequence of the newest record a pickup's
	// count has seen (0: none, or a state from before it was kept): one
	// newer than it at a relay's start was published by a relay that
	// stopped before its count (countUncounted).
	TakenSeq uint64 `json:"taken_seq,omitempty"`
	// FetchedSeq is the other relay's stream sequence of the newest
	// record fetched for this channel (0: none, or a state from before it
	// was kept): a record at or below it offered again was taken in here
	// before, its ack lost or the other relay's consumer made anew.
	FetchedSeq uint64 `json:"fetched_seq,omitempty"`
	// FetchedFrom names the stream FetchedSeq counts in: the other relay's
	// id and its EXCHANGE stream's creation time. A stream made anew (an
	// office's store wiped, its relay installed again) counts from 1
	// again, and its new records are not ones taken in here before.
	FetchedFrom string `json:"fetched_from,omitempty"`
	// Writes are random ids of the last writes of this state (recentWrites
	// of them), newest last: a writer whose answer was lost finds its own
	// among them even when another writer changed the channel since.
	Writes []uint64 `json:"writes,omitempty"`

	LastPickupAt    time.Time `json:"last_pickup_at,omitzero"`
	LastDeliveredAt time.Time `json:"last_delivered_at,omitzero"`
	LastAckAt       time.Time `json:"last_ack_at,omitzero"`
	LastError       string    `json:"last_error,omitempty"`
	LastErrorAt     time.Time `json:"last_error_at,omitzero"`
	// Warning is a standing inconsistency an operator must look at (the
	// sender was restored from a backup); it clears when the numbers agree.
	Warning   string    `json:"warning,omitempty"`
	WarningAt time.Time `json:"warning_at,omitzero"`
}

// applyAck records an acknowledgement of this channel: its addressee (To)
// sent a message back whose ReceivedNo says the last of this channel's
// messages it received. A ReceivedNo above anything relay carried on the
// channel means the sender (From) sent numbers it no longer has — 1C's
// "restored from a backup" — or To receives From's messages another way.
// changed says it changed anything: a node repeats its ReceivedNo until it
// receives something new.
func (c *Channel) applyAck(receivedNo uint64, now time.Time) (changed bool) {
	acked, warning := c.AckedNo, c.Warning
	if receivedNo > c.AckedNo {
		c.AckedNo = receivedNo
		c.LastAckAt = now
	}
	c.aheadOfCarried(now)
	return c.AckedNo != acked || c.Warning != warning
}

// aheadOfCarried sets the warning that To acknowledged more than relay
// carried, or clears it once relay carried as far. Asked at every
// acknowledgement and, while the warning stands, at every write of the
// channel's state: the number it names is what relay carried, kept current
// (found walking through the quick start: it named the number of the day
// it was raised).
func (c *Channel) aheadOfCarried(now time.Time) {
	carried := max(c.PickedNo, c.DeliveredNo)
	switch {
	case carried > 0 && c.AckedNo > carried:
		if c.Warning == "" {
			c.WarningAt = now
		}
		c.Warning = fmt.Sprintf("%s acknowledged No %d of %s → %s, but relay carried only up to No %d: %s was probably restored from a backup, or %s gets %s's messages another way",
			c.To, c.AckedNo, c.From, c.To, carried, c.From, c.To, c.From)
	case c.Warning != "":
		c.Warning, c.WarningAt = "", time.Time{}
	}
}

// gapPrefix starts the last error of a sequential channel holding a number
// for one before it.
const gapPrefix = "gap: "

// unreadPrefix starts the last error of a sequential channel whose next
// number waits for the node to read the one in its folder.
const unreadPrefix = "waiting: "

// WaitsForRead says the channel's next number waits for the node to read
// (acknowledge) the one its folder holds: the node's pace, not a failure.
func (c *Channel) WaitsForRead() bool { return waitsForRead(c.LastError) }

// waitsForRead says a channel's last error msg is such a wait.
func waitsForRead(msg string) bool { return strings.HasPrefix(msg, unreadPrefix) }

// HeldOnGap says the channel's last error is a hold for a number before the
// one waiting (a gap, or a dead letter it waits behind).
func (c *Channel) HeldOnGap() bool { return strings.HasPrefix(c.LastError, gapPrefix) }

// passedNo is the number a sequential channel has gone past: delivered,
// found at the destination, or dropped by the operator.
func (c *Channel) passedNo() uint64 { return max(c.DeliveredNo, c.DroppedNo) }

// deadHold is the number of the dead message the channel's later numbers
// wait for, 0 when there is none.
func (c *Channel) deadHold() uint64 {
	if c.DeadNo > c.passedNo() {
		return c.DeadNo
	}
	return 0
}

// drop records the operator's drop of number no: the channel goes past it
// when it gets to it, never past a lower number it still waits for (found
// by review: dropping No 3 let No 4 go while No 2 was a dead letter, and
// No 2 retried was stale: lost).
func (c *Channel) drop(no uint64) {
	switch {
	case no <= c.passedNo():
	case c.passedNo() == 0 && (c.deadHold() == 0 || c.DeadNo >= no):
		// Nothing delivered yet: any number may start the channel.
		c.DroppedNo = no
	case !slices.Contains(c.DroppedAhead, no):
		c.DroppedAhead = append(c.DroppedAhead, no)
	}
	c.settle()
}

// settle goes past the dropped numbers the channel has got to, and forgets
// a dead number it has gone past.
func (c *Channel) settle() {
	for i := slices.Index(c.DroppedAhead, c.passedNo()+1); i >= 0; i = slices.Index(c.DroppedAhead, c.passedNo()+1) {
		c.DroppedNo = c.passedNo() + 1
		c.DroppedAhead = slices.Delete(c.DroppedAhead, i, i+1)
	}
	c.DroppedAhead = slices.DeleteFunc(c.DroppedAhead, func(n uint64) bool { return n <= c.passedNo() })
	if len(c.DroppedAhead) == 0 {
		c.DroppedAhead = nil
	}
	if c.deadHold() == 0 {
		c.DeadNo = 0
	}
}

// appendLast appends v to s and keeps the last n: the channel state's
// bounded memories of sequences and write ids.
func appendLast(s []uint64, v uint64, n int) []uint64 {
	s = append(s, v)
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// Pending is the number of messages taken in and not yet finished.
func (c *Channel) Pending() uint64 {
	if c.Queued < c.Resolved {
		return 0
	}
	return c.Queued - c.Resolved
}

// States reads and updates channel state with compare-and-set, so concurrent
// ingest and delivery (and replicas) never lose each other's updates.
type States struct {
	kv  jetstream.KeyValue
	now func() time.Time
	// after is time.After, for the backoff between tries (a test's own
	// timer proves the backoff ends with ctx).
	after func(time.Duration) <-chan time.Time
	*revCache
}

// revCache is the newest state read or written per key, with its revision:
// Update first tries a compare-and-set against it and reads the bucket only
// when someone else changed the key meanwhile. The lanes of one relay share
// it, so ingest and delivery of a channel do not make each other's CAS fail.
type revCache struct {
	mu   sync.Mutex
	last map[string]revState
}

type revState struct {
	c   Channel
	rev uint64
}

// NewStates wraps the channels bucket.
func NewStates(kv jetstream.KeyValue) *States {
	return &States{kv: kv, now: time.Now, after: time.After, revCache: &revCache{last: map[string]revState{}}}
}

// on is s working through kv (another connection's handle on the same
// bucket) and sharing s's cache.
func (s *States) on(kv jetstream.KeyValue) *States {
	return &States{kv: kv, now: s.now, after: s.after, revCache: s.revCache}
}

func (s *revCache) remember(key string, c Channel, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.last[key]; !ok || rev >= old.rev {
		s.last[key] = revState{c.clone(), rev}
	}
}

// forget drops what is remembered of key: the next Recent reads it.
func (s *revCache) forget(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.last, key)
}

func (s *revCache) cached(key string) (Channel, uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.last[key]
	return r.c.clone(), r.rev, ok
}

// clone is a copy of c that shares no array with it: an Update appends to
// a copy of the remembered state while another goroutine may append to
// another copy.
func (c Channel) clone() Channel {
	c.RecentSeqs = slices.Clone(c.RecentSeqs)
	c.Writes = slices.Clone(c.Writes)
	c.Uncounted = slices.Clone(c.Uncounted)
	c.DroppedAhead = slices.Clone(c.DroppedAhead)
	return c
}

// Get returns the channel's state; a channel never seen is zero with its names set.
func (s *States) Get(ctx context.Context, plan, from, to string) (Channel, error) {
	c, _, err := s.get(ctx, bus.ChannelKey(plan, from, to))
	if err != nil {
		return c, err
	}
	c.Plan, c.From, c.To = plan, from, to
	return c, nil
}

// Recent is the channel's state as this relay last read or wrote it, read
// from the bucket only when it has not seen the channel yet. Its numbers
// may lag behind the bucket's (numbers only grow), never run ahead: good for
// an early drop at pickup, for an acknowledgement that may change nothing,
// and for the delivery's check where this relay alone writes the bucket
// (an embedded NATS).
func (s *States) Recent(ctx context.Context, plan, from, to string) (Channel, error) {
	c, _, ok := s.cached(bus.ChannelKey(plan, from, to))
	if !ok {
		return s.Get(ctx, plan, from, to)
	}
	c.Plan, c.From, c.To = plan, from, to
	return c, nil
}

func (s *States) get(ctx context.Context, key string) (Channel, uint64, error) {
	var c Channel
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return c, 0, nil
	}
	if err != nil {
		return c, 0, fmt.Errorf("channel state %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return c, 0, fmt.Errorf("channel state %s: %w", key, err)
	}
	s.remember(key, c, e.Revision())
	return c, e.Revision(), nil
}

// recentWrites is how many write ids a channel's state keeps: a lost
// answer is looked into at the next read, and a channel sees about three
// writes a message, so this covers five messages of one channel within the
// answer's timeout (5 s). More than that and a lost write can still count
// twice.
const recentWrites = 16

// Update applies fn to the channel's state and stores it, retrying on a
// concurrent change. fn may be called more than once. When it fails with a
// write whose answer was lost, the state this relay remembers is
// forgotten: the write may be in, and what is judged next by Recent (the
// record offered again) must see it (found by review: judged by the state
// from before, a stale record was counted twice).
func (s *States) Update(ctx context.Context, plan, from, to string, fn func(c *Channel)) (Channel, error) {
	key := bus.ChannelKey(plan, from, to)
	c, lost, err := s.update(ctx, key, plan, from, to, fn)
	if err != nil && lost {
		s.forget(key)
	}
	return c, err
}

func (s *States) update(ctx context.Context, key, plan, from, to string, fn func(c *Channel)) (Channel, bool, error) {
	// No answer is not "not written": a write the server applied while its
	// answer was lost (a timeout on a slow or shared NATS), or applies
	// later, would be applied a second time by the retry (a message
	// counted twice). lost holds the ids of this call's writes that got no
	// answer; the state read next tells whether one of them is in, also
	// when other writers changed the channel since.
	var lost []uint64
	readFails := 0
	applied := func(c Channel) bool {
		return slices.ContainsFunc(c.Writes, func(id uint64) bool { return slices.Contains(lost, id) })
	}
	for attempt := 0; ; attempt++ {
		c, rev, ok := s.cached(key)
		confirm := false
		if !ok || attempt > 0 {
			var err error
			if c, rev, err = s.get(ctx, key); err != nil {
				readFails++
				// A few reads only (each may wait the 5 s API timeout):
				// a NATS that is down must not hold the caller minutes.
				if len(lost) == 0 || readFails > 5 || ctx.Err() != nil {
					return c, len(lost) > 0, err
				}
				// A write of this call may be in: failing now would have
				// the caller do it again. Read again.
				select {
				case <-ctx.Done():
					return c, len(lost) > 0, err
				case <-s.after(min(time.Duration(attempt)*100*time.Millisecond, time.Second)):
				}
				continue
			}
			// A read holding one of this call's lost writes is no proof
			// the write stays: during a leader change the old leader may
			// answer with a write it never committed. The same state
			// written on top of it by compare-and-set is.
			confirm = applied(c)
		}
		c.Plan, c.From, c.To = plan, from, to
		if !confirm {
			fn(&c)
			if c.Warning != "" {
				// Whatever moved the numbers (a pickup, a delivery, a
				// count made up after a stop), the warning names them
				// as they are now.
				c.aheadOfCarried(s.now())
			}
		}
		id := rand.Uint64()
		c.Writes = appendLast(c.Writes, id, recentWrites)
		b, err := json.Marshal(c)
		if err != nil {
			return c, len(lost) > 0, err
		}
		var nrev uint64
		if rev == 0 {
			nrev, err = s.kv.Create(ctx, key, b)
		} else {
			nrev, err = s.kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			s.remember(key, c, nrev)
			return c, false, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			lost = append(lost, id)
		}
		if attempt >= 50 || ctx.Err() != nil {
			return c, len(lost) > 0, fmt.Errorf("channel state %s: %w", key, err)
		}
		if attempt >= 2 {
			// Writers that keep colliding on one channel take turns.
			select {
			case <-ctx.Done():
			case <-s.after(rand.N(time.Duration(attempt) * 2 * time.Millisecond)):
			}
		}
	}
}

// List returns every channel's state.
func (s *States) List(ctx context.Context) ([]Channel, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("channel states: %w", err)
	}
	var out []Channel
	seen := map[string]bool{}
	for key := range lister.Keys() {
		if seen[key] {
			// A key written while it was listed comes again (seen with
			// nats-server 2.9.10): listed twice, /metrics refused the
			// duplicate series with a 500 (found by local CI).
			continue
		}
		seen[key] = true
		c, _, err := s.get(ctx, key)
		if err != nil {
			return nil, err
		}
		if c.From == "" { // deleted between list and get
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// setError records a failure on the channel without touching the numbers,
// and says whether it did: the same error again within a minute is not
// written (a held message tells its hold at every look).
func (s *States) setError(ctx context.Context, plan, from, to, msg string) bool {
	if c, _, ok := s.cached(bus.ChannelKey(plan, from, to)); ok && c.LastError == msg && s.now().Sub(c.LastErrorAt) < time.Minute {
		return false
	}
	_, err := s.Update(ctx, plan, from, to, func(c *Channel) {
		c.LastError = msg
		c.LastErrorAt = s.now()
	})
	return err == nil
}
