package main

// The mail scenario: -mail-messages files of -mail-size end to end by mail,
// from relay A's outbox over SMTP (postfix) into a mailbox that relay B
// reads over IMAPS (dovecot, IDLE) and delivers into its inboxes; against
// a plain go-smtp sender and a plain go-imap reader moving the same files
// through the same servers, in the same run. See bench/README.md.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	gomail "github.com/emersion/go-message/mail"
)

// mailOptions are the knobs of the mail and mailbig scenarios.
type mailOptions struct {
	Dir      string // parent of the temp folders
	Messages int
	Channels int   // destination nodes WH01..; messages are spread over them
	Size     int64 // body size of each message
	MaxSize  int64 // relay A's max_message_size, and postfix's message_size_limit
	BigSize  int64 // mailbig: size of the message file
	Settle   time.Duration
	Poll     time.Duration
	RelayBin string
	Timeout  time.Duration
	progress
}

// mailRelaySide is the relays' run of the mail scenario.
type mailRelaySide struct {
	Elapsed  time.Duration // first write into A's outbox → last final message in B's inboxes with the right sha256
	Observed int           // versions seen in B's inboxes with the right sha256
	CPUA     time.Duration // CPU of relay A over the run
	CPUB     time.Duration
	PeakA    int64 // VmHWM of relay A
	PeakB    int64
	Seen     dist // write into A's outbox → in B's inbox (drop → delivery)
	// Where the time goes, per message, from the relays' logs and the
	// Maildir watcher (informative; "-" when not observed).
	Picked    dist // write → relay A logged "picked up" (settle, read, check, in A's JetStream)
	Sent      dist // A "picked up" → A logged "delivered" (SMTP session, 250 after DATA)
	Postfix   dist // A "delivered" → mail in the Maildir (postfix queue, LMTP)
	Fetch     dist // mail in the Maildir → relay B logged "picked up" (IDLE, FETCH, check, in B's JetStream)
	Deliver   dist // B "picked up" → in B's inbox (sequential holds included)
	Mails     int  // mails seen arriving in the Maildir
	Unread    int  // of which gone before their header was read
	Reordered int  // mails that reached the Maildir before the previous number of their channel
	BReorder  int  // messages relay B picked up before the previous number of their channel
	BHeld     int  // relay B's "gap: holding" lines (sequential mode waiting for the previous number)
}

// mailBaseSide is the baseline's run of the mail scenario.
type mailBaseSide struct {
	Elapsed  time.Duration // start of the SMTP session → last mail fetched, checked, written and expunged
	SendDone time.Duration // start → last mail accepted (250 after DATA)
	Fetched  int           // files fetched with the right sha256
	Rounds   int           // IMAP rounds (SEARCH, FETCH, STORE, EXPUNGE) that found mail
	Latency  dist          // MAIL FROM of a mail → its file written
}

// mailReport is the mail scenario's outcome.
type mailReport struct {
	w     *workload
	opts  mailOptions
	relay mailRelaySide
	base  mailBaseSide
}

// mailWorkload makes the messages: node ЦО sends to channels destination
// nodes WH01..WHnn, messages spread evenly, each generated in memory before
// any clock starts.
func mailWorkload(messages, channels int, bodySize int64) (*workload, error) {
	if channels < 1 || messages < channels {
		return nil, fmt.Errorf("need -mail-messages (%d) >= -mail-channels (%d) >= 1", messages, channels)
	}
	w := &workload{messages: messages, nodes: []string{mailSender}}
	for i := range channels {
		to := fmt.Sprintf("WH%02d", i+1)
		w.nodes = append(w.nodes, to)
		w.channels = append(w.channels, &channel{from: mailSender, to: to})
	}
	return w, w.generate(bodySize)
}

func (w *workload) destinations() []string {
	var to []string
	for _, c := range w.channels {
		to = append(to, c.to)
	}
	return to
}

// runMail runs the baseline, then the relays, through the same servers.
func runMail(ctx context.Context, o mailOptions) (rep mailReport, err error) {
	rep.opts = o
	if rep.w, err = mailWorkload(o.Messages, o.Channels, o.Size); err != nil {
		return rep, err
	}
	mb, err := startMailBench(ctx, o.Dir, "relay-bench-mail-", o.RelayBin, o.MaxSize, o.logf)
	if err != nil {
		return rep, err
	}
	defer mb.close(&err)
	if rep.base, err = runMailBaseline(ctx, mb, rep.w, o); err != nil {
		return rep, fmt.Errorf("baseline go-smtp + go-imap: %w", err)
	}
	if rep.relay, err = runMailRelays(ctx, mb, rep.w, o); err != nil {
		return rep, fmt.Errorf("relay: %w", err)
	}
	return rep, nil
}

// runMailBaseline sends every message of w as one mail over one go-smtp
// session (STARTTLS, AUTH) to the base mailbox, in the order the relay's
// producers start them (every channel's No 1, then every No 2, ...), while
// one go-imap session (IMAPS) fetches, checks, writes and deletes them as
// they arrive (see baseIMAP.drain). The clock runs from the SMTP dial until
// every file was fetched with the right sha256 and its mail expunged.
func runMailBaseline(ctx context.Context, mb *mailBench, w *workload, o mailOptions) (side mailBaseSide, err error) {
	m := mb.m
	out, err := os.MkdirTemp(mb.root, "base-")
	if err != nil {
		return side, err
	}
	defer os.RemoveAll(out)
	byTo := map[string]*channel{}
	for _, c := range w.channels {
		byTo[c.to] = c
		if err := os.Mkdir(filepath.Join(out, c.to), 0o755); err != nil {
			return side, err
		}
	}
	var order []mailKey
	for k := 0; ; k++ {
		n := len(order)
		for _, c := range w.channels {
			if k < len(c.msgs) {
				order = append(order, mailKey{c.to, c.msgs[k].no})
			}
		}
		if len(order) == n {
			break
		}
	}

	o.logf("baseline: %d mails over one go-smtp session, fetched by one go-imap session", len(order))
	var mu sync.Mutex
	sentAt := map[mailKey]time.Time{}
	gotAt := map[mailKey]time.Time{}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()

	sendErr := make(chan error, 1)
	var sendDone time.Duration // written before sendErr yields nil
	go func() {
		sendErr <- func() error {
			c, err := baseSMTP(m, mb.tc, mailBaseUser)
			if err != nil {
				return err
			}
			defer c.Close()
			defer context.AfterFunc(runCtx, func() { c.Close() })()
			for _, k := range order {
				if runCtx.Err() != nil {
					return runCtx.Err()
				}
				ch := byTo[k.to]
				msg := ch.msgs[k.no-1]
				mu.Lock()
				sentAt[k] = time.Now()
				mu.Unlock()
				bm := baseMail{from: m.Address(mailBaseUser), to: m.Address(mailBaseUser), attachName: ch.name(),
					fields: map[string]string{"X-Bench-To": k.to, "X-Bench-No": strconv.FormatUint(k.no, 10)}, body: bytes.NewReader(msg.data)}
				if err := bm.send(c); err != nil {
					return fmt.Errorf("mail %s No %d: %w", ch.name(), k.no, err)
				}
			}
			sendDone = time.Since(start)
			return c.Quit()
		}()
	}()

	ic, err := dialBaseIMAP(m, mb.tc, mailBaseUser)
	if err != nil {
		cancel()
		<-sendErr
		return side, err
	}
	defer ic.close()
	type recvd struct {
		rounds int
		err    error
	}
	recvDone := make(chan recvd, 1)
	go func() {
		handle := func(h gomail.Header, att io.Reader) error {
			to := h.Get("X-Bench-To")
			no, _ := strconv.ParseUint(h.Get("X-Bench-No"), 10, 64)
			ch := byTo[to]
			if ch == nil || no < 1 || no > ch.final() {
				return fmt.Errorf("unexpected mail for %q No %d", to, no)
			}
			sum, err := writeVia(filepath.Join(out, to, ch.name()), att)
			if err != nil {
				return err
			}
			if want := ch.msgs[no-1].sha; sum != want {
				return fmt.Errorf("%s No %d fetched with sha256 %s, sent %s", ch.name(), no, sum, want)
			}
			mu.Lock()
			gotAt[mailKey{to, no}] = time.Now()
			mu.Unlock()
			return nil
		}
		done := func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(gotAt) == len(order)
		}
		rounds, err := ic.drain(runCtx, handle, done)
		recvDone <- recvd{rounds, err}
	}()

	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	var rerr recvd
	for got := false; !got; {
		select {
		case err := <-sendErr:
			sendErr = nil
			if err != nil {
				cancel()
				<-recvDone
				return side, fmt.Errorf("send: %w", err)
			}
		case rerr = <-recvDone:
			got = true
		case <-deadline.C:
			cancel()
			rerr = <-recvDone
			mu.Lock()
			n := len(gotAt)
			mu.Unlock()
			return side, fmt.Errorf("timed out after %s: %d of %d mails fetched", o.Timeout, n, len(order))
		}
	}
	side.Elapsed = time.Since(start)
	if rerr.err != nil {
		cancel()
		if sendErr != nil {
			<-sendErr
		}
		return side, fmt.Errorf("fetch: %w", rerr.err)
	}
	if sendErr != nil {
		if err := <-sendErr; err != nil {
			return side, fmt.Errorf("send: %w", err)
		}
	}
	side.SendDone = sendDone
	side.Rounds = rerr.rounds
	side.Fetched = len(gotAt)
	var lat []time.Duration
	for k, t := range gotAt {
		lat = append(lat, t.Sub(sentAt[k]))
	}
	side.Latency = distOf(lat)
	// Untimed: nothing left behind.
	if err := awaitEmptyMailbox(ctx, m, mailBaseUser, 10*time.Second); err != nil {
		return side, err
	}
	o.logf("baseline: %s (all sent after %s), %d IMAP rounds", side.Elapsed.Round(time.Millisecond), side.SendDone.Round(time.Millisecond), side.Rounds)
	return side, nil
}

// writeVia writes r to path through a temp file and a rename, as a script
// delivering into a 1C inbox would (no fsync), and returns its sha256.
func writeVia(path string, r io.Reader) (string, error) {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), r, make([]byte, 64<<10)); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), os.Rename(tmp, path)
}

// twoRelays are relay A (dir pickup of node ЦО, SMTP delivery) and relay B
// (IMAP pickup of node ЦО, dir delivery), each the relay binary with its
// own folder, embedded JetStream and API address.
type twoRelays struct {
	a, b *relayChild
}

// startTwoRelays writes both routings and starts both relays; the caller
// stops them with finish.
func startTwoRelays(ctx context.Context, mb *mailBench, aDir, bDir string, configA, configB func(listen string) string) (*twoRelays, error) {
	a, err := startRelay(ctx, mb.bin, aDir, configA, 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("relay A: %w", err)
	}
	b, err := startRelay(ctx, mb.bin, bDir, configB, 60*time.Second)
	if err != nil {
		var ferr error
		a.finish(&ferr)
		return nil, fmt.Errorf("relay B: %w", err)
	}
	return &twoRelays{a: a, b: b}, nil
}

// finish stops both relays by their PIDs; see relayChild.finish. *err says
// which relay's log tail follows.
func (t *twoRelays) finish(err *error) {
	var errA, errB error
	if *err != nil {
		errA, errB = errors.New("relay A"), errors.New("relay B")
	}
	t.a.finish(&errA)
	t.b.finish(&errB)
	switch {
	case *err != nil:
		*err = fmt.Errorf("%w\n%v\n%v", *err, errA, errB)
	case errA != nil:
		*err = errA
	case errB != nil:
		*err = errB
	}
}

// exitErr yields an error if either relay exits before ctx ends.
func (t *twoRelays) exitErr(ctx context.Context) <-chan error {
	out := make(chan error, 2)
	go func() {
		select {
		case <-t.a.done:
			out <- fmt.Errorf("relay A exited: %v", t.a.err)
		case <-t.b.done:
			out <- fmt.Errorf("relay B exited: %v", t.b.err)
		case <-ctx.Done():
		}
	}()
	return out
}

// cpu is the CPU both relays have used so far.
func (t *twoRelays) cpu() (a, b time.Duration, err error) {
	if a, err = procCPU(t.a.pid()); err != nil {
		return
	}
	b, err = procCPU(t.b.pid())
	return
}

// runMailRelays starts relay A and relay B on the mail servers (A: node
// ЦО picks up from a/ЦО/out, every WHnn delivers by SMTP into the hub
// mailbox; B: node ЦО picks up from the hub mailbox over IMAPS with IDLE,
// every WHnn delivers into b/WHnn/in; destination mode sequential on both,
// so that every message is delivered) and times the workload through them.
func runMailRelays(ctx context.Context, mb *mailBench, w *workload, o mailOptions) (side mailRelaySide, err error) {
	m := mb.m
	aDir, bDir := filepath.Join(mb.root, "a"), filepath.Join(mb.root, "b")
	if err := os.MkdirAll(filepath.Join(aDir, mailSender, "out"), 0o755); err != nil {
		return side, err
	}
	to := w.destinations()
	for _, n := range to {
		if err := os.MkdirAll(filepath.Join(bDir, n, "in"), 0o755); err != nil {
			return side, err
		}
	}
	rs, err := startTwoRelays(ctx, mb, aDir, bDir,
		func(listen string) string {
			return mailRelayAYAML("bench-mail-a", listen, m, mailSender, to, "sequential", o.MaxSize, o.Settle, o.Poll)
		},
		func(listen string) string {
			return mailRelayBYAML("bench-mail-b", listen, m, mailSender, to, "sequential")
		})
	if err != nil {
		return side, err
	}
	defer rs.finish(&err)

	s := site{
		root: mb.root,
		out:  func(c *channel) string { return filepath.Join("a", c.from, "out") },
		in:   func(c *channel) string { return filepath.Join("b", c.to, "in") },
	}
	run, err := startSide(ctx, s, w)
	if err != nil {
		return side, err
	}
	defer run.stop()
	tr := run.tr
	tr.numbersCheckedElsewhere() // by both relays' channel states: checkFTPStates
	mw, err := startMaildirWatch(run.ctx, m.Maildir(mailHubUser))
	if err != nil {
		return side, err
	}
	defer mw.close()

	o.logf("relay: %d messages on %d channels, A → SMTP → %s's mailbox → IMAP → B", w.messages, len(w.channels), mailHubUser)
	cpuA0, cpuB0, err := rs.cpu()
	if err != nil {
		return side, err
	}
	// A channel's No 2 is written only once No 1 is in B's inbox: sequential
	// mode holds a later number only on a channel that has delivered before,
	// and the mailbox does not keep A's order (see README), so a No 2 taken
	// first by B would be delivered and No 1 dropped as stale.
	taken := func(ctx context.Context, path string, c *channel) error {
		if err := run.sig.gone(ctx, path, c); err != nil {
			return err
		}
		return firstDelivered(ctx, tr, c)
	}
	start := time.Now()
	prodErr := producer{run.site, writeLike1C, taken}.run(run.ctx, w, &tr.mu)
	if err := tr.wait(ctx, o.Timeout, prodErr, rs.exitErr(run.ctx)); err != nil {
		return side, err
	}
	side.Elapsed = tr.doneAt.Sub(start)
	cpuA1, cpuB1, err := rs.cpu()
	if err != nil {
		return side, err
	}
	side.CPUA, side.CPUB = cpuA1-cpuA0, cpuB1-cpuB0
	side.Observed = tr.seen()
	side.Seen = w.span(&tr.mu, stampWritten, stampSeen)

	// Untimed: every message accounted for by both relays' channel states,
	// nothing dead, the mailbox empty.
	if err := checkFTPStates(ctx, rs.a.state(), w); err != nil {
		return side, fmt.Errorf("relay A: %w", err)
	}
	if err := checkFTPStates(ctx, rs.b.state(), w); err != nil {
		return side, fmt.Errorf("relay B: %w", err)
	}
	if err := awaitEmptyMailbox(ctx, m, mailHubUser, 10*time.Second); err != nil {
		return side, err
	}
	if side.PeakA, _, err = procMem(rs.a.pid()); err != nil {
		return side, err
	}
	if side.PeakB, _, err = procMem(rs.b.pid()); err != nil {
		return side, err
	}
	mailBreakdown(&side, w, &tr.mu, mw, rs)
	o.logf("relay: %s, CPU A %s B %s, peak RSS A %s B %s; drop→delivered %s", side.Elapsed.Round(time.Millisecond),
		side.CPUA.Round(time.Millisecond), side.CPUB.Round(time.Millisecond), humanBytes(side.PeakA), humanBytes(side.PeakB), side.Seen)
	return side, nil
}

// firstDelivered returns at once unless c's producer has written only
// its first message (and there are more): then it waits until the tracker
// has seen that one in its inbox.
func firstDelivered(ctx context.Context, tr *tracker, c *channel) error {
	for {
		tr.mu.Lock()
		wait := len(c.msgs) > 1 && c.times[1].written.IsZero() && !tr.chans[c.key()].seen[1]
		tr.mu.Unlock()
		if !wait {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// mailBreakdown splits each message's way into the stretches between the
// stamps the bench has: its write (tracker), relay A's "delivered" log line,
// its arrival in the Maildir, relay B's "picked up" line and its appearance
// in B's inbox (tracker).
func mailBreakdown(side *mailRelaySide, w *workload, mu *sync.Mutex, mw *maildirWatch, rs *twoRelays) {
	aEvents, bEvents := relayLogEvents(rs.a.logPath), relayLogEvents(rs.b.logPath)
	aPicked, aSent := eventTimes(aEvents, "picked up"), eventTimes(aEvents, "delivered")
	bPicked := eventTimes(bEvents, "picked up")
	for _, e := range bEvents {
		if e.msg == "held" {
			side.BHeld++
		}
	}
	arrivals, unread := mw.seen()
	side.Mails, side.Unread = len(arrivals), unread
	inMaildir := map[mailKey]time.Time{}
	for _, a := range arrivals {
		if _, ok := inMaildir[a.key]; !ok {
			inMaildir[a.key] = a.at
		}
	}
	var picked, sent, postfix, fetch, deliver []time.Duration
	span := func(xs *[]time.Duration, from, to time.Time) {
		if !from.IsZero() && !to.IsZero() {
			*xs = append(*xs, to.Sub(from))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range w.channels {
		lc := logChannel(c)
		for i, st := range c.times {
			no := uint64(i + 1)
			k := mailKey{c.to, no}
			aIn, sentAt, arrived, bIn := aPicked[lc][no], aSent[lc][no], inMaildir[k], bPicked[lc][no]
			span(&picked, st.written, aIn)
			span(&sent, aIn, sentAt)
			span(&postfix, sentAt, arrived)
			span(&fetch, arrived, bIn)
			span(&deliver, bIn, st.seen)
			if prev, ok := inMaildir[mailKey{c.to, no - 1}]; ok && !arrived.IsZero() && arrived.Before(prev) {
				side.Reordered++
			}
			if prev, ok := bPicked[lc][no-1]; ok && !bIn.IsZero() && bIn.Before(prev) {
				side.BReorder++
			}
		}
	}
	side.Picked, side.Sent, side.Postfix, side.Fetch, side.Deliver = distOf(picked), distOf(sent), distOf(postfix), distOf(fetch), distOf(deliver)
}
