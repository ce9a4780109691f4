package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/relay1c/relay/bus"
)

// leases hands out named leases in EXCHANGE_LEASES, so that relay replicas
// sharing a NATS cluster never run the same pickup, fetch or channel
// delivery at once. A lease is a key whose value is its holder; the bucket's
// TTL removes it unless the holder renews it, so a dead replica's leases
// lapse by themselves and another takes over. The holder names the relay
// instance (id, host, listen address): a replica restarted in place takes
// its own lease back at once instead of waiting for it to lapse.
type leases struct {
	kv    jetstream.KeyValue
	owner string
	ttl   time.Duration
	log   *slog.Logger
}

// lease is one held lease. Its context ends when the lease is lost (taken
// by another holder, or not renewed for most of its TTL) or released.
type lease struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// errLeaseHeld says another holder has the lease.
var errLeaseHeld = errors.New("lease held by another relay")

// try takes key if it is free or already ours; errLeaseHeld if another
// holder has it.
func (ls *leases) try(ctx context.Context, key string) (*lease, error) {
	asked := time.Now() // the server's TTL counts from its write, after this
	rev, err := ls.kv.Create(ctx, key, []byte(ls.owner))
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := ls.kv.Get(ctx, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			return nil, errLeaseHeld // lapsed just now: the next try takes it
		case gerr != nil:
			return nil, fmt.Errorf("lease %s: %w", key, gerr)
		case string(e.Value()) != ls.owner:
			return nil, fmt.Errorf("%w (%s)", errLeaseHeld, e.Value())
		}
		rev, err = ls.kv.Update(ctx, key, []byte(ls.owner), e.Revision())
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return nil, errLeaseHeld // taken meanwhile
	case err != nil:
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	return ls.keep(ctx, key, rev, asked), nil
}

// hold waits until it holds key, asking every ttl/6; it fails only when ctx
// ends.
func (ls *leases) hold(ctx context.Context, key string) (*lease, error) {
	every := max(ls.ttl/6, 200*time.Millisecond)
	for {
		l, err := ls.try(ctx, key)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, errLeaseHeld) {
			ls.log.Warn("lease not taken", "lease", key, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(every):
		}
	}
}

// keep renews a taken lease every ttl/3 until it is released or lost.
// Renewal is a compare-and-set on the lease's revision, so a holder whose
// lease lapsed and was taken cannot renew it back. Without a successful
// renewal for 2/3 of the TTL the lease counts as lost here, well before
// the server lets another holder take it: a renewal counts from when it
// was sent (the server's TTL runs from its write, after that), and no
// attempt waits past that deadline, so a link that stalls mid-renewal is
// noticed at 2/3 of the TTL, not when the answer times out. written is
// when the lease was asked for.
func (ls *leases) keep(parent context.Context, key string, rev uint64, written time.Time) *lease {
	ctx, cancel := context.WithCancel(parent)
	l := &lease{ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		renewed := written
		t := time.NewTicker(ls.ttl / 3)
		defer t.Stop()
		for {
			deadline := renewed.Add(2 * ls.ttl / 3)
			lapse := time.NewTimer(time.Until(deadline))
			select {
			case <-ctx.Done():
				lapse.Stop()
				// Released (or the parent ended): free it for the others.
				dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				ls.drop(dctx, key, rev)
				dcancel()
				return
			case <-lapse.C:
				ls.log.Warn("lease lost: not renewed in time", "lease", key)
				cancel()
				return
			case <-t.C:
				lapse.Stop()
			}
			sent := time.Now()
			until := sent.Add(ls.ttl / 3)
			if deadline.Before(until) {
				until = deadline
			}
			rctx, rcancel := context.WithDeadline(ctx, until)
			next, err := ls.kv.Update(rctx, key, []byte(ls.owner), rev)
			rcancel()
			switch {
			case err == nil:
				rev, renewed = next, sent
				continue
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
				ls.log.Warn("lease lost: taken by another relay", "lease", key)
			case !time.Now().Before(deadline):
				ls.log.Warn("lease lost: not renewed in time", "lease", key, "err", err)
			default:
				continue
			}
			cancel()
			return
		}
	}()
	return l
}

// drop deletes a released lease if it is still ours. A renewal cut short by
// the release may have reached the server without its answer reaching us,
// leaving a newer revision than rev: then the key is read to make sure.
func (ls *leases) drop(ctx context.Context, key string, rev uint64) {
	if ls.kv.Delete(ctx, key, jetstream.LastRevision(rev)) == nil {
		return
	}
	if e, err := ls.kv.Get(ctx, key); err == nil && string(e.Value()) == ls.owner {
		_ = ls.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	}
}

// Context ends when the lease is lost or released.
func (l *lease) Context() context.Context { return l.ctx }

// Release gives the lease up (deleting it, so another holder may take it
// at once) and waits for its renewer to stop.
func (l *lease) Release() {
	l.cancel()
	<-l.done
}

// pulls records in EXCHANGE_LEASES which replica a pulling (http_pull)
// node talks to: polled notes a pull here (at most every ttl/3, in the
// background; the entry lapses ttl after the node's last pull), elsewhere
// says the node lately pulled from another replica (read at most once a
// second). A message parked here while the node pulls elsewhere is handed
// back, and comes round to the replica the node talks to.
func (ls *leases) pulls(node string) (polled func(), elsewhere func() bool) {
	key := "pull." + bus.Token(node)
	var mu sync.Mutex
	var wrote, read time.Time
	var other bool
	polled = func() {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(wrote) < ls.ttl/3 {
			return
		}
		wrote = time.Now()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), ls.ttl/3)
			defer cancel()
			if _, err := ls.kv.Put(ctx, key, []byte(ls.owner)); err != nil {
				ls.log.Debug("pull not recorded", "node", node, "err", err)
			}
		}()
	}
	elsewhere = func() bool {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(read) < time.Second {
			return other
		}
		read = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		e, err := ls.kv.Get(ctx, key)
		other = err == nil && string(e.Value()) != ls.owner
		return other
	}
	return polled, elsewhere
}
