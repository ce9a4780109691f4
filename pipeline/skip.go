package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// ErrCannotSkip marks a skip refused for what the channel is: not
// sequential, served by another relay, no number above the one named
// waits, or a number in the way is queued (it waits for its delivery) or
// a dead letter (retried or dropped instead).
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
	h := exchange.Header{ExchangePlan: plan, From: from, To: to}
	name := channelName(h)
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
	case !p.cfg.Serves(n):
		// Its channel states are that relay's (found by review: taken
		// here, told done, and nothing moved).
		return refuse("%s is served by relay %s: give the skip there", to, n.Relay)
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
	// A number in the way that is queued (failing at the destination, or
	// held) waits for its delivery: skipped, it would be passed and then
	// dropped as stale behind the next one (found by review).
	queued, err := p.laneOn(p.b, p.log).queuedIn(ctx, h, p.doneThrough(ctx, to)+1, st.RecentSeqs, st.passedNo(), no)
	if err != nil {
		return Channel{}, fmt.Errorf("%s: %w", name, err)
	}
	if queued > 0 {
		return refuse("No %d is queued: it waits for its delivery (relay status %s shows why), not for a skip", queued, to)
	}
	moved := false
	c, err := p.states.Update(ctx, plan, from, to, func(c *Channel) {
		// Checked again on the state written: another replica may have
		// moved the channel since.
		if moved = no <= c.passedNo() || c.deadHold() > 0 && c.deadHold() <= no; moved {
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
	if moved {
		return refuse("the channel moved on meanwhile (delivered up to No %d): see relay status", c.DeliveredNo)
	}
	recordEvent(p.b.Conn, p.log, Event{Step: StepDropped, File: exchange.FileName(from, to, exchange.FormatXML), Node: to, Channel: name, No: no,
		Detail: fmt.Sprintf("the operator skipped the numbers up to No %d: the channel goes on without them", no)})
	p.log.Info("gap skipped by the operator", "channel", name, "through", no)
	return c, nil
}

// gapHold is what a message of h held on a gap says: the channel passed
// No passed, and lowest (0: none) is the lowest number queued between
// them. The numbers from passed+1 to below lowest (or to below h's) are
// missing, and the command it names goes on without all of them: a relay
// down while 1C wrote over its file leaves a run of them, which one
// number at a time would take a skip each (found by review).
func gapHold(h exchange.Header, passed, lowest uint64) string {
	through := h.MessageNo - 1
	if lowest > 0 {
		through = lowest - 1
	}
	switch {
	case through <= passed:
		return fmt.Sprintf(gapPrefix+"holding No %d until No %d, queued, is delivered", h.MessageNo, passed+1)
	case through == passed+1:
		return fmt.Sprintf(gapPrefix+"holding No %d until No %d arrives; if it never will, `%s` goes on without it",
			h.MessageNo, passed+1, skipCommand(h, through))
	}
	return fmt.Sprintf(gapPrefix+"holding No %d until No %d arrives (No %d to No %d are missing); if they never will, `%s` goes on without them",
		h.MessageNo, passed+1, passed+1, through, skipCommand(h, through))
}

// skipCommand is the command that lets the channel of h go on past No no,
// as an operator pastes it into a shell.
func skipCommand(h exchange.Header, no uint64) string {
	args := []string{h.ExchangePlan, h.From, h.To}
	cmd := "relay skip "
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "-") }) {
		cmd += "-- " // a code starting with '-' is no flag (found by review)
	}
	for _, a := range args {
		cmd += shellArg(a) + " "
	}
	return cmd + strconv.FormatUint(no, 10)
}

// shellArg is s as one word of a shell command an operator can paste:
// quoted when it holds anything a shell reads specially.
func shellArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`;&|<>()*?[]#~!{}") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
