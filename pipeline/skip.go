package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// ErrCannotSkip marks a skip refused for what the channel is: not
// sequential, or no number above the one named waits, or a dead letter in
// the way (that one is dropped or retried instead).
var ErrCannotSkip = errors.New("cannot skip")

// SkipThrough is the operator's word that the sequential channel plan:
// from → to goes on without the numbers up to no it still waits for: a gap
// that will not fill (the sender's 1C wrote its next number over one relay
// had not taken yet). The numbers after it are delivered at the held
// message's next look (within maxHoldDelay). It returns the channel's
// state after the skip.
//
// A skipped number that arrives after all is not waited for, and is
// delivered if the destination has nothing newer (a folder's stale check
// drops it otherwise), as a dropped dead letter's is.
func (p *Pipeline) SkipThrough(ctx context.Context, plan, from, to string, no uint64) (Channel, error) {
	name := channelName(exchange.Header{ExchangePlan: plan, From: from, To: to})
	refuse := func(format string, a ...any) (Channel, error) {
		return Channel{}, fmt.Errorf("%s: %w: %s", name, ErrCannotSkip, fmt.Sprintf(format, a...))
	}
	n := p.cfg.Nodes[to]
	switch {
	case plan == "":
		return refuse("a channel of messages routed by name has no numbers to skip")
	case n == nil:
		return refuse("no node %q in routing.yaml", to)
	case n.Mode != config.ModeSequential:
		return refuse("%s is a %s node: no number is waited for", to, n.Mode)
	case no == 0:
		return refuse("No 0 is no message number")
	}
	st, err := p.states.Get(ctx, plan, from, to)
	if err != nil {
		return Channel{}, fmt.Errorf("%s: %w", name, err)
	}
	switch passed := st.passedNo(); {
	case st.PickedNo == 0 && st.Queued == 0:
		return refuse("relay has carried nothing on it")
	case no <= passed:
		return refuse("it is past No %d already (delivered up to No %d)", passed, st.DeliveredNo)
	case no >= st.PickedNo:
		return refuse("no number above No %d has come (picked up to No %d): nothing waits for it", no, st.PickedNo)
	case st.deadHold() > 0 && st.deadHold() <= no:
		return refuse("No %d is a dead letter: retry it or drop it (relay dead list), then skip what is left", st.deadHold())
	}
	c, err := p.states.Update(ctx, plan, from, to, func(c *Channel) {
		// Checked again on the state written: another replica may have
		// moved the channel since.
		if no <= c.passedNo() || c.deadHold() > 0 && c.deadHold() <= no {
			return
		}
		c.DroppedNo = no
		c.settle()
		if c.HeldOnGap() {
			// What the channel waits for next tells its own.
			c.LastError, c.LastErrorAt = "", time.Time{}
		}
	})
	if err != nil {
		return Channel{}, fmt.Errorf("%s: %w", name, err)
	}
	recordEvent(p.b.Conn, p.log, Event{Step: StepDropped, Node: to, Channel: name, No: no,
		Detail: fmt.Sprintf("the operator skipped the numbers up to No %d: the channel goes on without them", no)})
	p.log.Info("gap skipped by the operator", "channel", name, "through", no)
	return c, nil
}

// shellArg is s as one word of a shell command an operator can paste:
// quoted when it holds anything a shell reads specially.
func shellArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`;&|<>()*?[]#~!{}") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
