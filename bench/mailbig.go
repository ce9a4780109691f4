package main

// The mailbig scenario: one big message by mail, relay A → SMTP (split into
// parts of max_message_size) → postfix → Maildir → IMAPS → relay B (joins
// the parts) → B's inbox; against the same file split into the same parts,
// sent over one go-smtp session and fetched by one go-imap session; with
// both relays' peak RSS.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"github.com/relay1c/relay/exchange"
)

// mailBigResult is the outcome of the mailbig scenario.
type mailBigResult struct {
	Size      int64
	MaxSize   int64 // max_message_size = postfix's message_size_limit
	PartBytes int64 // file bytes per part (both sides)

	// Baseline: go-smtp sends the parts, go-imap fetches them as they arrive.
	BaseParts int
	BaseSend  time.Duration // SMTP dial → last part accepted
	Base      time.Duration // SMTP dial → every part fetched, written at its offset, expunged

	// Relays: from the rename into A's outbox.
	Relay     time.Duration // → final name in B's inbox
	Ingested  time.Duration // → gone from A's outbox (in A's JetStream)
	ASent     time.Duration // → relay A logged "delivered" (every part accepted); 0 if not found
	FirstPart time.Duration // → first part in the Maildir
	LastPart  time.Duration // → last part in the Maildir
	BPicked   time.Duration // → relay B logged "picked up" (joined, checked, in its JetStream); 0 if not found
	Parts     int           // parts announced in the mails' X-Relay-Part
	PartsSeen int           // part mails seen arriving in the Maildir
	CPUA      time.Duration
	CPUB      time.Duration
	PeakA     int64 // VmHWM
	PeakB     int64
}

// mailPartBytes is how many file bytes relay A puts into one mail of at
// most limit bytes (adapters/mail's rawPerMail): base64 turns 57 bytes
// into a 78-byte line, 16 KiB are left for the headers and the text part.
func mailPartBytes(limit int64) int64 {
	return max((limit-16<<10)/78*57, 57)
}

// runMailBig generates the message, times the baseline on it, then the
// relays.
func runMailBig(ctx context.Context, o mailOptions) (res mailBigResult, err error) {
	log := o.with("mailbig: ")
	res.Size, res.MaxSize, res.PartBytes = o.BigSize, o.MaxSize, mailPartBytes(o.MaxSize)
	mb, err := startMailBench(ctx, o.Dir, "relay-bench-mailbig-", o.RelayBin, o.MaxSize, log.logf)
	if err != nil {
		return res, err
	}
	defer mb.close(&err)

	const to = "WH"
	name := exchange.FileName(mailSender, to, exchange.FormatXML)
	stageDir := filepath.Join(mb.root, "stage")
	if err := os.Mkdir(stageDir, 0o755); err != nil {
		return res, err
	}
	staged := filepath.Join(stageDir, name)
	log.logf("generating %s", humanBytes(o.BigSize))
	sentSHA, size, err := generateBig(staged, mailSender, to, o.BigSize)
	if err != nil {
		return res, err
	}
	res.Size = size
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	if err := runMailBigBaseline(ctx, mb, staged, name, sentSHA, o, &res, log.with("baseline: ")); err != nil {
		return res, fmt.Errorf("baseline go-smtp + go-imap: %w", err)
	}
	if err := runMailBigRelays(ctx, mb, staged, name, to, sentSHA, o, &res, log.with("relay: ")); err != nil {
		return res, fmt.Errorf("relay: %w", err)
	}
	return res, nil
}

// runMailBigBaseline sends the staged file as ceil(size/PartBytes) mails
// (part i carries bytes [(i-1)·PartBytes, i·PartBytes) as a base64
// attachment, X-Bench-Part: i/n) over one go-smtp session to the base
// mailbox, while one go-imap session fetches each part as it arrives,
// writes it at its offset of the output file, and deletes it. Clock: SMTP
// dial until every part was written and expunged. Then (untimed) the
// output's sha256 is checked.
func runMailBigBaseline(ctx context.Context, mb *mailBench, staged, name, sentSHA string, o mailOptions, res *mailBigResult, log progress) error {
	m, per := mb.m, res.PartBytes
	n := int((res.Size + per - 1) / per)
	res.BaseParts = n
	src, err := os.Open(staged)
	if err != nil {
		return err
	}
	defer src.Close()
	outPath := filepath.Join(mb.root, "base-"+name)
	dst, err := os.Create(outPath)
	if err != nil {
		return err
	}
	defer os.Remove(outPath)
	defer dst.Close()

	log.logf("%d parts of %s over one go-smtp session, fetched by one go-imap session", n, humanBytes(per))
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
			for i := 1; i <= n; i++ {
				if runCtx.Err() != nil {
					return runCtx.Err()
				}
				off := int64(i-1) * per
				bm := baseMail{from: m.Address(mailBaseUser), to: m.Address(mailBaseUser), attachName: fmt.Sprintf("%s.%03d", name, i),
					fields: map[string]string{"X-Bench-Part": fmt.Sprintf("%d/%d", i, n)}, body: io.NewSectionReader(src, off, min(per, res.Size-off))}
				if err := bm.send(c); err != nil {
					return fmt.Errorf("part %d/%d: %w", i, n, err)
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
		return err
	}
	defer ic.close()
	var mu sync.Mutex
	got := map[int]bool{}
	handle := func(h gomail.Header, att io.Reader) error {
		is, ns, _ := strings.Cut(h.Get("X-Bench-Part"), "/")
		i, _ := strconv.Atoi(is)
		if nn, _ := strconv.Atoi(ns); nn != n || i < 1 || i > n {
			return fmt.Errorf("unexpected part %q", h.Get("X-Bench-Part"))
		}
		off := int64(i-1) * per
		want := min(per, res.Size-off)
		w, err := io.CopyBuffer(io.NewOffsetWriter(dst, off), att, make([]byte, 256<<10))
		if err != nil {
			return err
		}
		if w != want {
			return fmt.Errorf("part %d/%d decoded to %d bytes, want %d", i, n, w, want)
		}
		mu.Lock()
		got[i] = true
		mu.Unlock()
		return nil
	}
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n
	}
	recvErr := make(chan error, 1)
	go func() {
		_, err := ic.drain(runCtx, handle, done)
		recvErr <- err
	}()
	deadline := time.NewTimer(o.Timeout)
	defer deadline.Stop()
	for received := false; !received; {
		select {
		case err := <-sendErr:
			sendErr = nil
			if err != nil {
				cancel()
				<-recvErr
				return fmt.Errorf("send: %w", err)
			}
		case err := <-recvErr:
			if err != nil {
				cancel()
				if sendErr != nil {
					<-sendErr
				}
				return fmt.Errorf("fetch: %w", err)
			}
			received = true
		case <-deadline.C:
			cancel()
			<-recvErr
			return fmt.Errorf("timed out after %s", o.Timeout)
		}
	}
	res.Base = time.Since(start)
	if sendErr != nil {
		if err := <-sendErr; err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	res.BaseSend = sendDone
	log.logf("all sent after %s, all fetched after %s", res.BaseSend.Round(time.Millisecond), res.Base.Round(time.Millisecond))
	// Untimed: the joined file is the sent one, nothing left behind.
	if err := checkSHA256(outPath, sentSHA, "baseline: joined file"); err != nil {
		return err
	}
	return awaitEmptyMailbox(ctx, m, mailBaseUser, 10*time.Second)
}

// runMailBigRelays starts relay A (node ЦО picks up from a/ЦО/out, node WH
// delivers by SMTP with max_message_size) and relay B (node ЦО picks up
// from the hub mailbox over IMAPS, node WH delivers into b/WH/in), then
// times the staged file from its rename into a/ЦО/out until it appears in
// b/WH/in. Afterwards both channel states, the delivered sha256 and the
// empty mailbox are checked.
func runMailBigRelays(ctx context.Context, mb *mailBench, staged, name, to, sentSHA string, o mailOptions, res *mailBigResult, log progress) (err error) {
	m := mb.m
	aDir, bDir := filepath.Join(mb.root, "a"), filepath.Join(mb.root, "b")
	outDir, inDir := filepath.Join(aDir, mailSender, "out"), filepath.Join(bDir, to, "in")
	for _, d := range []string{outDir, inDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	rs, err := startTwoRelays(ctx, mb, aDir, bDir,
		func(listen string) string {
			return mailRelayAYAML("bench-mailbig-a", listen, m, mailSender, []string{to}, "", o.MaxSize, o.Settle, o.Poll)
		},
		func(listen string) string {
			return mailRelayBYAML("bench-mailbig-b", listen, m, mailSender, []string{to}, "")
		})
	if err != nil {
		return err
	}
	defer rs.finish(&err)

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-rs.a.done:
			cancel(fmt.Errorf("relay A exited: %v", rs.a.err))
		case <-runCtx.Done():
		}
	}()
	w, err := newWatcher(outDir, inDir)
	if err != nil {
		return err
	}
	defer w.Close()
	mw, err := startMaildirWatch(runCtx, m.Maildir(mailHubUser))
	if err != nil {
		return err
	}
	defer mw.close()
	rss := sampleRSS(runCtx, rs.a.pid())
	defer rss.stop()
	cpuA0, cpuB0, err := rs.cpu()
	if err != nil {
		return err
	}

	msg := bigMessage{staged: staged, out: filepath.Join(outDir, name), outName: outDir, in: filepath.Join(inDir, name), sha256: sentSHA}
	log.logf("moving the file into %s", msg.outName)
	t0 := time.Now()
	if err := os.Rename(msg.staged, msg.out); err != nil {
		return err
	}
	res.Ingested, res.Relay, err = awaitBig(runCtx, w, rs.b.child, msg, t0, o.Timeout, rss, log)
	if err != nil {
		if c := context.Cause(runCtx); c != nil && ctx.Err() == nil {
			err = c
		}
		return err
	}
	cpuA1, cpuB1, err := rs.cpu()
	if err != nil {
		return err
	}
	res.CPUA, res.CPUB = cpuA1-cpuA0, cpuB1-cpuB0
	log.logf("delivered after %s", res.Relay.Round(time.Millisecond))

	// Untimed checks: both channels resolved, nothing dead, same bytes, the
	// mailbox empty.
	if err := awaitStates(ctx, rs.a.state(), t0.Add(o.Timeout), oneResolved); err != nil {
		return fmt.Errorf("relay A: %w", err)
	}
	if err := awaitStates(ctx, rs.b.state(), t0.Add(o.Timeout), oneResolved); err != nil {
		return fmt.Errorf("relay B: %w", err)
	}
	if err := checkSHA256(msg.in, msg.sha256, "relay: delivered file"); err != nil {
		return err
	}
	if err := awaitEmptyMailbox(ctx, m, mailHubUser, 10*time.Second); err != nil {
		return err
	}
	if res.PeakA, _, err = procMem(rs.a.pid()); err != nil {
		return err
	}
	if res.PeakB, _, err = procMem(rs.b.pid()); err != nil {
		return err
	}

	// Where the time went.
	arrivals, _ := mw.seen()
	for _, a := range arrivals {
		if a.part == 0 {
			continue
		}
		res.PartsSeen++
		res.Parts = max(res.Parts, a.n)
		d := a.at.Sub(t0)
		if res.FirstPart == 0 || d < res.FirstPart {
			res.FirstPart = d
		}
		res.LastPart = max(res.LastPart, d)
	}
	lc := benchPlan + ":" + mailSender + "->" + to
	if t, ok := eventTimes(relayLogEvents(rs.a.logPath), "delivered")[lc][1]; ok {
		res.ASent = t.Sub(t0)
	}
	if t, ok := eventTimes(relayLogEvents(rs.b.logPath), "picked up")[lc][1]; ok {
		res.BPicked = t.Sub(t0)
	}
	return nil
}
