package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// PurgeDone removes from EXCHANGE the records that are done and older than
// olderThan: for each node, those at or below the ack floor of every
// consumer that reads the node's records (its delivery consumer, or the
// fetch consumer of the relay that serves it), stored before now minus
// olderThan. The stream has no age limit, so a record nobody has acked
// yet stays however old it gets (a message waiting a month for its office
// is still there when the office comes back), and a node no consumer reads
// keeps all of its records. The age leaves a done record to the ones that
// look back at it for a while (the duplicate window, the handover count,
// an operator's `nats stream view`).
func (b *Bus) PurgeDone(ctx context.Context, olderThan time.Duration) error {
	before, err := b.firstSince(ctx, time.Now().Add(-olderThan))
	if err != nil || before <= 1 {
		return err
	}
	type reader struct {
		name    string
		filters []string
		floor   uint64
		waiting bool      // records wait for it
		lastAck time.Time // or its creation, if it never acked
	}
	var readers []reader
	nodes := map[string]bool{}
	infos := b.Exchange.ListConsumers(ctx)
	for ci := range infos.Info() {
		fs := ci.Config.FilterSubjects
		if len(fs) == 0 {
			fs = []string{ci.Config.FilterSubject}
		}
		for i, f := range fs {
			if f == "" {
				fs[i] = ">"
			} else if nodeFilter(f) {
				nodes[f] = true
			}
		}
		last := ci.Created
		if ci.AckFloor.Last != nil {
			last = *ci.AckFloor.Last
		}
		readers = append(readers, reader{ci.Name, fs, ci.AckFloor.Stream,
			ci.NumPending > 0 || ci.NumAckPending > 0, last})
	}
	if err := infos.Err(); err != nil {
		return fmt.Errorf("stream %s: consumers: %w", StreamExchange, err)
	}
	warned := map[string]bool{}
	for node := range nodes {
		limit := before - 1
		for _, r := range readers {
			if !slices.ContainsFunc(r.filters, func(f string) bool { return server.SubjectsCollide(f, node) }) {
				continue
			}
			limit = min(limit, r.floor)
			if r.waiting && time.Since(r.lastAck) > idleReader && !warned[r.name] {
				warned[r.name] = true
				b.log.Warn("records wait for a consumer that has acked nothing for a week: "+
					"its relay is down, or it was left by a change of routing.yaml "+
					"(then remove it: nats consumer rm "+StreamExchange+" "+r.name+")",
					"consumer", r.name, "records", node, "last_ack", r.lastAck)
			}
		}
		if limit == 0 {
			continue
		}
		if err := b.Exchange.Purge(ctx, jetstream.WithPurgeSubject(node), jetstream.WithPurgeSequence(limit+1)); err != nil {
			return fmt.Errorf("stream %s: purge %s below %d: %w", StreamExchange, node, limit+1, err)
		}
	}
	return nil
}

// idleReader is how long a consumer with records waiting may go without
// an ack before PurgeDone says so.
const idleReader = 7 * 24 * time.Hour

// nodeFilter says f is the records of one node (DeliverSubjects), the only
// filters PurgeDone purges: a consumer reading more (an operator's) only
// holds purges back.
func nodeFilter(f string) bool {
	rest, ok := strings.CutPrefix(f, SubjectPrefix+"*.*.")
	return ok && rest != "" && !strings.ContainsAny(rest, ".*>")
}

// firstSince is the sequence of the first EXCHANGE record stored at or
// after t (one past the last when there is none), found by bisecting the
// stream: records are stored in time order.
func (b *Bus) firstSince(ctx context.Context, t time.Time) (uint64, error) {
	info, err := b.Exchange.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", StreamExchange, err)
	}
	lo, hi := info.State.FirstSeq, info.State.LastSeq+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		m, err := b.Exchange.GetMsg(ctx, mid, jetstream.WithGetMsgSubject(SubjectPrefix+">"))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			hi = mid // none from mid on
		case err != nil:
			return 0, fmt.Errorf("stream %s: record %d: %w", StreamExchange, mid, err)
		case m.Time.Before(t):
			lo = m.Sequence + 1
		default:
			hi = mid // none between mid and m
		}
	}
	return lo, nil
}
