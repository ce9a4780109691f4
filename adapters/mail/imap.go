package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Pickup is an IMAP pickup, a Watermill Subscriber: it emits one message per
// exchange mail (or per complete set of parts) in a mailbox and commits the
// mail (after: delete, move or keep) only when the message is acked. Mails
// whose subject is not an exchange subject, names another node's message
// (one for this node, in a mailbox its 1C also reads), or whose sender is
// not allowed, are never touched. A matching mail that is malformed goes to dead letters
// with the reason and is moved to the quarantine folder.
type Pickup struct {
	node    string
	cfg     IMAPConfig
	t       target
	tc      *tls.Config
	after   config.After
	mem     folder.Memory
	spool   string
	lim     exchange.Limits
	pw      folder.Passwords
	pattern *regexp.Regexp
	log     *slog.Logger
	now     func() time.Time

	trouble.Last

	folder.Loop

	// Owned by the run goroutine.
	validity  uint32
	known     map[imap.UID]verdict
	transfers map[string]*transfer
	finished  map[string]finishedSet
	skipped   map[imap.UID]*skippedMail
	// cuts counts, per mail, the sessions in a row that broke off while
	// it was fetched (see unreadable).
	cuts    map[imap.UID]int
	showing bool // the trouble shown is about skipped mails or the quarantine
	// unquarantined is the server's refusal of the quarantine folder
	// while a malformed mail it kept out sits in the mailbox: shown after
	// every scan until a move there succeeds (found by review: the first
	// scan of a session cleared it at once).
	unquarantined error
	wake          chan struct{}
	// conn is the current session's connection, nil between sessions.
	conn *progressConn
}

// verdict is what the pickup decided about a mail it has looked at.
type verdict int

const (
	ignored    verdict = iota + 1 // not an exchange mail, or from a stranger: never touched
	inTransfer                    // a part, waiting for its set
	disagrees                     // a part at odds with its set: looked at again when a set ends
	done                          // taken and kept (after: keep)
)

// transfer collects the parts of one split file.
type transfer struct {
	id    string
	file  string
	sha   string
	n     int
	parts map[int][]imap.UID // a part may arrive twice when a sender retried
	sizes map[imap.UID]int64 // RFC822.SIZE of each part's mail
	first time.Time          // the earliest arrival of any part
	// again is the latest arrival of a copy of part 1: a sender whose
	// retry comes more than an hour after it began the set sends it whole
	// again, part 1 first, and the parts it then sends complete what that
	// copy began.
	again time.Time
}

func (t *transfer) complete() bool { return len(t.parts) == t.n }

// since is when the set began, as part_timeout counts: at its latest
// part 1, else at its first part.
func (t *transfer) since() time.Time {
	if t.again.After(t.first) {
		return t.again
	}
	return t.first
}

func (t *transfer) uids() []imap.UID {
	var all []imap.UID
	for _, u := range t.parts {
		all = append(all, u...)
	}
	slices.Sort(all)
	return all
}

// finishedSet is a set taken whole, remembered for part_timeout so that a
// late copy of one of its parts (the sender missed the server's answer and
// sent it again) is committed like its siblings instead of starting a set
// that can never complete.
type finishedSet struct {
	n   int
	sha string
	at  time.Time
}

// maxFinished bounds the memory of finished sets; the oldest goes first.
const maxFinished = 10000

// finishedSlots is how many sets taken whole a pickup remembers in the
// shared pickup memory, so that a late copy of a part is known after a
// restart (or on another replica) too. A set's slot follows from its
// transfer id; a later set in the same slot replaces it, which only
// brings back the in-process memory's limits for the one replaced.
const finishedSlots = 1024

// skippedMail is a mail the server refused to hand out (a tagged NO to the
// FETCH of it, as dovecot answers for a damaged mail file), or whose
// fetch broke the session off cutsToSkip times in a row: it is passed
// over, tried again later, and after unreadableGiveUp of failures no more.
// It is never deleted or moved: relay did not read it.
type skippedMail struct {
	what  string // the file (and part) it carries, for people
	err   error
	fails int
	first time.Time
	retry time.Time // zero: not tried again
}

// Retries of an unreadable mail: after unreadableRetry, doubling up to
// unreadableRetryMax, until unreadableGiveUp after the first failure.
// cutsToSkip is how many sessions in a row must break off while one mail
// is fetched before it is skipped like a refused one: dovecot, having
// announced a damaged mail file's size, can only disconnect, and the
// next session, oldest mail first, would fetch it first again for ever
// while every mail behind it waited (found by review).
const (
	cutsToSkip         = 3
	unreadableRetry    = time.Minute
	unreadableRetryMax = 2 * time.Hour
	unreadableGiveUp   = 24 * time.Hour
)

// due reports whether a skipped mail may be fetched again.
func (s *skippedMail) due(now time.Time) bool {
	return !s.retry.IsZero() && !now.Before(s.retry)
}

var _ message.Subscriber = (*Pickup)(nil)

// NewPickup makes the pickup of node from an IMAP mailbox. spool is where
// attachments are downloaded before they are checked and stored; mem is
// needed for after: keep.
func NewPickup(node string, cfg IMAPConfig, after config.After, mem folder.Memory, pw folder.Passwords, spool string, log *slog.Logger) (*Pickup, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if after.Action == config.AfterKeep && mem == nil {
		return nil, fmt.Errorf("imap %s: after: keep needs a memory", node)
	}
	t, err := cfg.target()
	if err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig(t.host)
	if err != nil {
		return nil, fmt.Errorf("imap %s: %w", node, err)
	}
	pattern, _ := cfg.pattern()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pickup{
		node: node, cfg: cfg, t: t, tc: tc, after: after, mem: mem, pw: pw, spool: spool,
		lim: cfg.Limits.WithDefaults(), pattern: pattern,
		log:   log.With("node", node, "adapter", "imap", "mailbox", t.display),
		now:   time.Now,
		known: map[imap.UID]verdict{}, transfers: map[string]*transfer{},
		finished: map[string]finishedSet{}, skipped: map[imap.UID]*skippedMail{}, cuts: map[imap.UID]int{},
		wake: make(chan struct{}, 1),
	}, nil
}

// Subscribe starts reading the mailbox; the topic is ignored. The channel
// closes when ctx ends or Close is called.
func (p *Pickup) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	return p.Start(ctx, p.spool, p.log, p.run), nil
}

// run keeps a session open, reconnecting with capped backoff.
func (p *Pickup) run(ctx context.Context, out chan<- *message.Message) {
	fails := 0
	for !p.Stopped(ctx) {
		worked, err := p.session(ctx, out)
		if p.Stopped(ctx) {
			return
		}
		if worked {
			fails = 0
		}
		p.Last.Set(err)
		wait := folder.Backoff(fails)
		fails++
		p.log.Warn("mailbox session ended; reconnecting", "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		case <-p.Closing():
		}
	}
}

// session logs in, selects the mailbox and scans it until an error.
// worked tells whether it got as far as a scan.
func (p *Pickup) session(ctx context.Context, out chan<- *message.Message) (worked bool, err error) {
	c, conn, err := dialIMAP(ctx, &p.cfg.Server, p.t, p.tc, p.log, &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				select {
				case p.wake <- struct{}{}:
				default:
				}
			}
		},
	})
	if err != nil {
		return false, fmt.Errorf("imap %s: %w", p.node, err)
	}
	p.conn = conn
	defer func() { p.conn = nil }()
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sel, err := c.Select(p.t.mailbox, nil).Wait()
	if err != nil {
		return false, fmt.Errorf("imap %s: select %s: %w", p.node, p.t.mailbox, err)
	}
	if sel.UIDValidity != p.validity {
		if p.validity != 0 {
			p.log.Warn("mailbox UIDVALIDITY changed; looking at every mail again", "old", p.validity, "new", sel.UIDValidity)
		}
		p.validity = sel.UIDValidity
		clear(p.known)
		clear(p.transfers)
		clear(p.skipped)
		clear(p.cuts)
	}
	for {
		if err := p.scan(ctx, c, out); err != nil {
			return worked, err
		}
		if !worked {
			worked = true
			p.Last.Set(nil)
			p.showing = false
		}
		p.showTrouble()
		if err := p.wait(ctx, c); err != nil {
			return worked, err
		}
		if p.Stopped(ctx) {
			return worked, nil
		}
	}
}

// memSeen is p.mem.Seen, its time not counted as the server's silence.
func (p *Pickup) memSeen(ctx context.Context, key, value string) (bool, error) {
	defer p.conn.pause()()
	return p.mem.Seen(ctx, key, value)
}

// memRemember is p.mem.Remember, its time not counted as the server's
// silence.
func (p *Pickup) memRemember(ctx context.Context, key, value string) error {
	defer p.conn.pause()()
	return p.mem.Remember(ctx, key, value)
}

// wait returns when new mail may have arrived: at once with IDLE, or after
// poll_interval (also the IDLE safety net: parts time out, servers forget).
func (p *Pickup) wait(ctx context.Context, c *imapclient.Client) error {
	timer := time.NewTimer(p.cfg.PollInterval.Std())
	defer timer.Stop()
	var idle *imapclient.IdleCommand
	if *p.cfg.IDLE && c.Caps().Has(imap.CapIdle) {
		var err error
		if idle, err = c.Idle(); err != nil {
			return fmt.Errorf("imap %s: IDLE: %w", p.node, err)
		}
	}
	// No reply is due while the session waits: a quiet server is fine.
	p.conn.wait(true)
	select {
	case <-p.wake:
	case <-timer.C:
	case <-ctx.Done():
	case <-p.Closing():
	case <-c.Closed():
	}
	p.conn.wait(false)
	if idle != nil {
		if err := idle.Close(); err != nil {
			return fmt.Errorf("imap %s: end IDLE: %w", p.node, err)
		}
		if err := idle.Wait(); err != nil {
			return fmt.Errorf("imap %s: IDLE: %w", p.node, err)
		}
	}
	return nil
}

// candidate is a matching mail seen by a scan.
type candidate struct {
	uid  imap.UID
	file string // from the subject; may lack its extension
	sha  string // X-Relay-Sha256, "" when absent
	size int64  // RFC822.SIZE
}

// scan looks at every mail not yet judged, takes the single ones (oldest
// first) and every complete set of parts, and gives up sets that waited
// longer than part_timeout.
func (p *Pickup) scan(ctx context.Context, c *imapclient.Client, out chan<- *message.Message) error {
	data, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		return fmt.Errorf("imap %s: search: %w", p.node, err)
	}
	uids := data.AllUIDs()
	now := p.now()
	present := make(map[imap.UID]bool, len(uids))
	var fresh []imap.UID
	for _, u := range uids {
		present[u] = true
		if sk := p.skipped[u]; sk != nil && !sk.due(now) {
			continue
		}
		if _, ok := p.known[u]; !ok {
			fresh = append(fresh, u)
		}
	}
	for u := range p.known {
		if !present[u] {
			delete(p.known, u)
		}
	}
	for u := range p.skipped {
		if !present[u] {
			delete(p.skipped, u)
		}
	}
	for id, f := range p.finished {
		if now.Sub(f.at) > p.cfg.PartTimeout.Std() {
			delete(p.finished, id)
		}
	}
	for id, t := range p.transfers {
		for i, us := range t.parts {
			us = slices.DeleteFunc(us, func(u imap.UID) bool { return !present[u] })
			if len(us) == 0 {
				delete(t.parts, i)
			} else {
				t.parts[i] = us
			}
		}
		if len(t.parts) == 0 {
			p.endTransfer(id)
		}
	}
	var singles []candidate
	var late []imap.UID
	for start := 0; start < len(fresh); start += headerBatch {
		batch := fresh[start:min(start+headerBatch, len(fresh))]
		s, l, err := p.classifyEach(ctx, c, batch)
		if err != nil {
			return err
		}
		singles = append(singles, s...)
		late = append(late, l...)
	}
	if len(late) > 0 {
		p.log.Info("late copy of a part of a set already taken; committed like its siblings", "uids", late)
		if err := p.commit(ctx, c, p.log, late); err != nil {
			return err
		}
	}
	for _, m := range singles {
		if p.Stopped(ctx) {
			return nil
		}
		if err := p.takeOne(ctx, c, m, out); err != nil {
			return err
		}
	}
	ids := make([]string, 0, len(p.transfers))
	for id := range p.transfers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if p.Stopped(ctx) {
			return nil
		}
		t := p.transfers[id]
		var err error
		switch {
		case t.complete():
			err = p.takeSet(ctx, c, t, out)
		case p.now().Sub(t.since()) > p.cfg.PartTimeout.Std():
			err = p.giveUpSet(ctx, c, t, out)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// nackRetry is how soon a mail the pipeline refused is offered again.
const nackRetry = 2 * time.Second

// headerBatch is how many mails' headers one FETCH asks for.
const headerBatch = 200

// whoFields are the header fields that say whether a mail is an exchange
// mail for this pickup at all. classify fetches them on their own too: when
// the other fields make the header too large to read (a field of megabytes),
// these still tell an exchange mail, which is then taken as malformed
// (a dead letter and quarantine), not left alone unseen.
var whoFields = []string{"From", "Subject"}

// classifyEach classifies uids with one FETCH, and when the server
// refuses that (a tagged NO: a damaged mail among them), each mail on its
// own, so that the one it will not hand out is skipped and the others are
// looked at.
func (p *Pickup) classifyEach(ctx context.Context, c *imapclient.Client, uids []imap.UID) (singles []candidate, late []imap.UID, err error) {
	singles, late, err = p.classify(ctx, c, uids)
	var ie *imap.Error
	if !errors.As(err, &ie) || len(uids) == 1 {
		if len(uids) == 1 && p.unreadable(ctx, uids[0], "", err) {
			return nil, nil, nil
		}
		return singles, late, err
	}
	singles, late = nil, nil
	for _, u := range uids {
		s, l, err := p.classify(ctx, c, []imap.UID{u})
		if p.unreadable(ctx, u, "", err) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		singles = append(singles, s...)
		late = append(late, l...)
	}
	slices.SortFunc(singles, func(a, b candidate) int { return int(a.uid) - int(b.uid) })
	return singles, late, nil
}

// look is what a header tells about one mail, applied to the pickup's
// state only once the whole FETCH has succeeded.
type look struct {
	uid    imap.UID
	ignore bool       // never touched
	single *candidate // a single-file exchange mail
	part   *partLook  // a part of a split file
}

// partLook is a part mail's place in its set.
type partLook struct {
	id, file, sha string
	pt            part
	arrived       time.Time
	size          int64
}

// classify fetches the few header fields that decide what a mail is and
// records the verdicts; it returns the single-file exchange mails and the
// late copies of parts of sets already taken. The verdicts are kept only
// when the FETCH completed: a header cut off by a broken connection is the
// session's trouble, not the mail's, and must not hide it for the life of
// the process.
func (p *Pickup) classify(ctx context.Context, c *imapclient.Client, uids []imap.UID) ([]candidate, []imap.UID, error) {
	sections := []*imap.FetchItemBodySection{
		{Specifier: imap.PartSpecifierHeader, HeaderFields: pickupHeaders, Peek: true},
		{Specifier: imap.PartSpecifierHeader, HeaderFields: whoFields, Peek: true},
	}
	cmd := c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{UID: true, RFC822Size: true, InternalDate: true, BodySection: sections})
	abandoned := false
	defer func() {
		if !abandoned {
			cmd.Close()
		}
	}()
	var looks []look
	answered := 0
	for m := cmd.Next(); m != nil; m = cmd.Next() {
		var (
			uid     imap.UID
			size    int64
			arrived time.Time
			hdr     gomail.Header
			hdrErr  error
			sawHdr  bool
			who     fields
		)
		for item := m.Next(); item != nil; item = m.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = it.UID
			case imapclient.FetchItemDataRFC822Size:
				size = it.Size
			case imapclient.FetchItemDataInternalDate:
				arrived = it.Time
			case imapclient.FetchItemDataBodySection:
				f := &hdr
				if it.Section != nil && len(it.Section.HeaderFields) == len(whoFields) {
					f = &who.hdr
				}
				sawHdr = sawHdr || f == &hdr
				if it.Literal == nil {
					if f == &hdr {
						hdrErr = errors.New("no header")
					}
					continue
				}
				lit := &srcReader{r: it.Literal}
				var err error
				if it.Literal.Size() > maxMIMEHeader {
					err = errHeaderTooBig
				} else {
					var h textproto.Header
					h, err = textproto.ReadHeader(bufio.NewReader(lit))
					*f = gomail.Header{Header: gomessage.Header{Header: h}}
				}
				if f == &hdr {
					hdrErr = err
				} else {
					who.err = err
				}
				_, _ = io.Copy(io.Discard, lit)
				if size := it.Literal.Size(); lit.broken(size) {
					// The connection broke, not the header.
					abandoned = true
					c.Close()
					err := lit.err
					if err == nil {
						err = fmt.Errorf("header cut off after %d of %d bytes", lit.n, size)
					}
					return nil, nil, fmt.Errorf("imap %s: fetch headers: message %d: %w", p.node, m.SeqNum, err)
				}
			}
		}
		if uid != 0 {
			answered++
		}
		if uid == 0 || !sawHdr {
			// No header came: a server's unsolicited FETCH of the mail
			// (its flags changed) taken for the answer, the answer itself
			// passed over. Judged at the next scan (found by review: a
			// good mail was ignored for good).
			continue
		}
		if errors.Is(hdrErr, errHeaderTooBig) && who.err == nil {
			looks = append(looks, p.judgeTooBig(uid, size, who.hdr))
			continue
		}
		looks = append(looks, p.judge(uid, size, arrived, hdr, hdrErr))
	}
	if err := cmd.Close(); err != nil {
		return nil, nil, fmt.Errorf("imap %s: fetch headers: %w", p.node, err)
	}
	if answered == 0 {
		// Not one answer matched by UID: a server naming the UID after
		// the data, which the IMAP client cannot match (found by review:
		// the mailbox stalled with no error shown). Mails expunged since
		// the search are the other cause: the next session tells.
		return nil, nil, fmt.Errorf("imap %s: fetch headers: the server answered none of %d mails by UID (it may name the UID after the data, which relay cannot read)", p.node, len(uids))
	}
	var (
		singles []candidate
		late    []imap.UID
	)
	for _, l := range looks {
		switch {
		case l.ignore:
			p.known[l.uid] = ignored
		case l.single != nil:
			singles = append(singles, *l.single)
		case l.part != nil:
			isLate, err := p.addPart(ctx, l.uid, l.part)
			if err != nil {
				return nil, nil, err
			}
			if isLate {
				late = append(late, l.uid)
			}
		}
	}
	slices.SortFunc(singles, func(a, b candidate) int { return int(a.uid) - int(b.uid) })
	return singles, late, nil
}

// fields is a header section read on its own, or why it could not be.
type fields struct {
	hdr gomail.Header
	err error
}

// judgeTooBig decides what a mail is whose header fields are larger than
// maxMIMEHeader, from its sender and subject alone: an exchange mail for
// this pickup is taken as a single mail, which its reading then finds
// malformed (a dead letter, the mail quarantined); anything else is left.
func (p *Pickup) judgeTooBig(uid imap.UID, size int64, who gomail.Header) look {
	l := p.judge(uid, size, time.Time{}, who, nil)
	if l.single == nil {
		return l
	}
	p.log.Warn("exchange mail with a header over the limit: taken as malformed", "uid", uid, "limit", maxMIMEHeader)
	return l
}

// judge decides from its header what a mail is.
func (p *Pickup) judge(uid imap.UID, size int64, arrived time.Time, hdr gomail.Header, hdrErr error) look {
	if hdrErr != nil {
		p.log.Info("mail with an unreadable header left alone", "uid", uid, "err", hdrErr)
		return look{uid: uid, ignore: true}
	}
	subject, _ := hdr.Subject()
	file := subjectFile(subject, p.pattern)
	if file == "" {
		return look{uid: uid, ignore: true}
	}
	var partFile string
	if hdr.Get(HeaderPart) != "" {
		partFile, _ = hdr.Text(HeaderFile)
	}
	if fromOtherNode(file, p.node, p.cfg.IsNode) || fromOtherNode(partFile, p.node, p.cfg.IsNode) {
		// A message for this node (or a third one) in a mailbox its 1C
		// shares: taking it would dead-letter it and, with after:
		// delete, remove it before the 1C it is meant for has read it.
		p.log.Debug("another node's exchange mail left alone", "uid", uid, "subject", subject)
		return look{uid: uid, ignore: true}
	}
	from := senderAddress(hdr)
	if !p.cfg.allowed(from) {
		p.log.Warn("exchange mail from a sender not in allowed_senders left alone", "uid", uid, "from", from, "subject", subject)
		return look{uid: uid, ignore: true}
	}
	sha := strings.ToLower(strings.TrimSpace(hdr.Get(HeaderSHA256)))
	if v := hdr.Get(HeaderPart); v != "" {
		pt, ok := parsePart(v)
		id := strings.TrimSpace(hdr.Get(HeaderTransfer))
		name, _ := hdr.Text(HeaderFile)
		if ok && validTransfer.MatchString(id) && validSHA256.MatchString(sha) {
			if name == "" {
				name = file
			}
			return look{uid: uid, part: &partLook{id: id, file: name, sha: sha, pt: pt, arrived: arrived, size: size}}
		}
		p.log.Warn("part mail with bad part headers; taken as a single mail", "uid", uid, "part", v, "transfer", id)
	}
	return look{uid: uid, single: &candidate{uid: uid, file: file, sha: sha, size: size}}
}

// angleAddr is the address in the last angle brackets of a From field.
var angleAddr = regexp.MustCompile(`<\s*([^<>\s@]+@[^<>\s@]+)\s*>\s*$`)

// senderAddress is the address of a mail's From field as RFC 5322 reads
// it; else, for a display name the standard does not allow unquoted that
// some mail programs write (`buh@example.ru <buh@example.ru>`,
// `1C:Предприятие <x@example.ru>`), the one in its last angle brackets;
// else "".
func senderAddress(h gomail.Header) string {
	if addrs, err := h.AddressList("From"); err == nil && len(addrs) > 0 {
		return addrs[0].Address
	}
	if m := angleAddr.FindStringSubmatch(h.Get("From")); m != nil {
		return m[1]
	}
	return ""
}

// addPart adds a part mail to its set; late reports a copy of a part of
// a set taken already, which the caller commits.
func (p *Pickup) addPart(ctx context.Context, uid imap.UID, l *partLook) (late bool, err error) {
	id, file, sha, pt, arrived, size := l.id, l.file, l.sha, l.pt, l.arrived, l.size
	t := p.transfers[id]
	if t == nil {
		taken, err := p.takenWhole(ctx, id, pt.n, sha)
		if err != nil || taken {
			return taken, err
		}
		if arrived.IsZero() {
			arrived = p.now()
		}
		t = &transfer{id: id, file: file, sha: sha, n: pt.n, parts: map[int][]imap.UID{}, sizes: map[imap.UID]int64{}, first: arrived}
		p.transfers[id] = t
	}
	if t.n != pt.n || t.sha != sha {
		// Another sender's parts under the same id: keep the first set's view;
		// this one is judged on its own after the set is done.
		p.log.Warn("part disagrees with its set; left alone", "uid", uid, "transfer", id, "part", pt.String())
		p.known[uid] = disagrees
		return false, nil
	}
	if !arrived.IsZero() && arrived.Before(t.first) {
		t.first = arrived
	}
	if pt.i == 1 && arrived.After(t.again) {
		t.again = arrived
	}
	t.parts[pt.i] = append(t.parts[pt.i], uid)
	t.sizes[uid] = size
	p.known[uid] = inTransfer
	return false, nil
}

// takenWhole reports whether the set id of n parts with this sha256 was
// taken whole before: by this process (for part_timeout) or, as the
// shared pickup memory recalls, by an earlier one.
func (p *Pickup) takenWhole(ctx context.Context, id string, n int, sha string) (bool, error) {
	if f, ok := p.finished[id]; ok && f.n == n && f.sha == sha {
		return true, nil
	}
	if p.mem == nil {
		return false, nil
	}
	return p.memSeen(ctx, p.finishedKey(id), finishedPrint(id, n, sha))
}

// finishedKey is the pickup memory's key for the slot of set id.
func (p *Pickup) finishedKey(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return fmt.Sprintf("%s;SET=%d", p.t.display, h.Sum32()%finishedSlots)
}

// finishedPrint is what the pickup memory holds for a set taken whole.
func finishedPrint(id string, n int, sha string) string {
	return fmt.Sprintf("set %s %d %s", id, n, strings.ToLower(sha))
}

// finish remembers a set taken whole: for part_timeout in the process,
// and in the shared pickup memory until its slot is taken by another.
// The set is committed already; a memory that cannot be written only
// leaves a late copy after a restart to time out as incomplete.
func (p *Pickup) finish(ctx context.Context, t *transfer) {
	if p.mem != nil {
		if err := p.memRemember(ctx, p.finishedKey(t.id), finishedPrint(t.id, t.n, t.sha)); err != nil {
			p.log.Warn("set taken whole not remembered", "transfer", t.id, "err", err)
		}
	}
	if _, ok := p.finished[t.id]; !ok && len(p.finished) >= maxFinished {
		oldest := ""
		for id, f := range p.finished {
			if oldest == "" || f.at.Before(p.finished[oldest].at) {
				oldest = id
			}
		}
		delete(p.finished, oldest)
	}
	p.finished[t.id] = finishedSet{n: t.n, sha: t.sha, at: p.now()}
}

// unreadable records a mail the server refused to hand out (err is an
// *imap.Error), or whose fetch broke the session off (a *cutOff) for the
// cutsToSkip-th time in a row, and reports whether it did: the mail is
// skipped until its next try, or for good after unreadableGiveUp, and
// shown in the status. what names the file it carries ("" when not known
// yet).
func (p *Pickup) unreadable(ctx context.Context, uid imap.UID, what string, err error) bool {
	var ie *imap.Error
	var cut *cutOff
	switch {
	case errors.As(err, &ie):
	case errors.As(err, &cut) && ctx.Err() == nil:
		if p.cuts[uid]++; p.cuts[uid] < cutsToSkip {
			return false // the session ends; the next fetches it again
		}
	default:
		return false
	}
	now := p.now()
	sk := p.skipped[uid]
	if sk == nil {
		sk = &skippedMail{first: now}
		p.skipped[uid] = sk
	}
	if what != "" {
		sk.what = what
	}
	sk.err = err
	sk.fails++
	if now.Sub(sk.first) >= unreadableGiveUp {
		sk.retry = time.Time{}
		p.log.Error("the server has refused a mail for long; it is left in the mailbox and no longer tried", "uid", uid, "file", sk.what, "tries", sk.fails, "err", err)
		return true
	}
	wait := min(unreadableRetry<<min(sk.fails-1, 10), unreadableRetryMax)
	sk.retry = now.Add(wait)
	p.log.Error("the server will not hand out a mail; it is skipped and tried again later", "uid", uid, "file", sk.what, "tries", sk.fails, "retry_in", wait, "err", err)
	return true
}

// showTrouble shows the mails the server will not hand out, else a
// refused quarantine, as the pickup's trouble, and clears that once there
// is neither.
func (p *Pickup) showTrouble() {
	if len(p.skipped) == 0 {
		switch {
		case p.unquarantined != nil:
			p.Last.Set(p.unquarantined)
			p.showing = true
		case p.showing:
			p.Last.Set(nil)
			p.showing = false
		}
		return
	}
	uids := slices.Sorted(maps.Keys(p.skipped))
	sk := p.skipped[uids[0]]
	what := ""
	if sk.what != "" {
		what = " (" + sk.what + ")"
	}
	then := "tried again later"
	if sk.retry.IsZero() {
		then = "no longer tried"
	}
	more := ""
	if len(uids) > 1 {
		more = fmt.Sprintf("; and %d more mails", len(uids)-1)
	}
	p.Last.Set(fmt.Errorf("imap %s: fetch UID %d%s: %w; the mail is skipped and left in the mailbox, %s%s",
		p.node, uids[0], what, sk.err, then, more))
	p.showing = true
}

// where names a mail for logs, metadata and keep-memory keys, as an IMAP
// URL (RFC 5092).
func (p *Pickup) where(uid imap.UID) string {
	return fmt.Sprintf("%s;UIDVALIDITY=%d/;UID=%d", p.t.display, p.validity, uid)
}

// errGone is a mail expunged by someone else between search and fetch.
var errGone = errors.New("mail is gone")

// takeOne takes a single-file exchange mail. Errors end the session;
// problems with the mail itself go to dead letters.
func (p *Pickup) takeOne(ctx context.Context, c *imapclient.Client, m candidate, out chan<- *message.Message) error {
	where := p.where(m.uid)
	log := p.log.With("uid", m.uid, "source", where)
	if p.after.Action == config.AfterKeep {
		seen, err := p.memSeen(ctx, where, "taken")
		if err != nil {
			return err
		}
		if seen {
			p.known[m.uid] = done
			return nil
		}
	}
	spooled, err := p.newSpool()
	if err != nil {
		return err
	}
	defer spooled.Release()
	if m.size > maxMailSize(p.lim) {
		// Not even fetched: go-message reads a mail's headers whole.
		_, err := p.emit(ctx, c, log, []imap.UID{m.uid}, withExt(m.file), "", spooled,
			fmt.Sprintf("mail of %d bytes is larger than an exchange file of the %d-byte limit can be", m.size, p.lim.MaxSize), out)
		return err
	}
	attach, err := p.fetchAttachment(c, m.uid, spooled.File)
	if errors.Is(err, errGone) || p.unreadable(ctx, m.uid, withExt(m.file), err) {
		return nil
	}
	if err != nil {
		return err
	}
	delete(p.skipped, m.uid)
	delete(p.cuts, m.uid)
	spooled.Size = attach.size
	name, problem := m.file, ""
	switch {
	case !attach.found && attach.broken != nil:
		problem = fmt.Sprintf("mail has no attachment that could be read: %v", attach.broken)
	case !attach.found:
		problem = "mail has no attachment"
	case attach.undecodable != nil:
		problem = fmt.Sprintf("attachment does not decode (its Content-Transfer-Encoding): %v", attach.undecodable)
	case attach.tooBig:
		problem = fmt.Sprintf("attachment is larger than the %d-byte limit", p.lim.MaxSize)
	case isMessageName(attach.name):
		if !sameStem(attach.name, m.file) {
			problem = fmt.Sprintf("subject names %s but the attachment is %s", m.file, attach.name)
		}
		name = attach.name
	case !isMessageName(name):
		// Older 1C subjects carry the name without its extension and an
		// attachment with another name: the content decides.
		name += spooled.Ext()
	}
	_, err = p.emit(ctx, c, log, []imap.UID{m.uid}, name, m.sha, spooled, problem, out)
	return err
}

// maxMailSize is the largest mail that can carry a file within lim: base64
// grows it by 78/57, and 1 MiB is left for headers and other parts.
func maxMailSize(lim exchange.Limits) int64 {
	return lim.MaxSize/57*78 + 1<<20
}

// emit hands one exchange file to the pipeline and commits its mails;
// taken reports that the file went through whole (acked, no problem) and
// its mails are committed.
func (p *Pickup) emit(ctx context.Context, c *imapclient.Client, log *slog.Logger, uids []imap.UID, name, sha string, f folder.Fetched, problem string, out chan<- *message.Message) (taken bool, err error) {
	where := p.where(uids[0])
	// The pipeline may take its time to ack: no reply is due meanwhile.
	p.conn.wait(true)
	msg, bad := folder.NewMessage(p.node, p.cfg.IsNode, where, name, f, p.lim, p.pw)
	switch {
	case problem != "":
	case bad != nil:
		problem = bad.Error()
	case sha != "" && msg.Metadata.Get(exchange.MetaSHA256) != sha:
		problem = fmt.Sprintf("sha256 of the attachment is %s, the mail says %s", msg.Metadata.Get(exchange.MetaSHA256), sha)
	}
	if problem != "" {
		msg.Metadata.Set(exchange.MetaProblem, problem)
	}
	handed := folder.Hand(ctx, p.Closing(), out, msg)
	p.conn.wait(false)
	switch handed {
	case folder.Acked:
	case folder.Nacked:
		// Left in the mailbox; the next scan offers it again.
		for _, u := range uids {
			delete(p.known, u)
		}
		log.Warn("pipeline refused the mail; it stays and is retried", "retry_in", nackRetry)
		// IDLE would otherwise wait for new mail or poll_interval.
		time.AfterFunc(nackRetry, func() {
			select {
			case p.wake <- struct{}{}:
			default:
			}
		})
		return false, nil
	default:
		return false, nil
	}
	if problem != "" {
		log.Warn("malformed exchange mail moved to quarantine", "file", name, "reason", problem, "folder", p.cfg.Quarantine)
		err = p.move(c, uids, p.cfg.Quarantine)
		var ie *imap.Error
		if errors.As(err, &ie) {
			// The server refuses the folder (not allowed to create it, a
			// namespace prefix): the dead letter is stored, so leave the
			// mail where it is rather than end the session and take it,
			// and only it, again and again.
			p.unquarantined = err
			p.Last.Set(err)
			log.Error("cannot move the malformed mail to quarantine; it stays in the mailbox", "err", err)
			for _, u := range uids {
				p.known[u] = done
			}
			return false, nil
		}
		if err != nil {
			return false, err
		}
		p.unquarantined = nil
		return false, nil
	}
	if err := p.commit(ctx, c, log, uids); err != nil {
		return false, err
	}
	return true, nil
}

// commit applies `after` to the mails of a message JetStream holds.
func (p *Pickup) commit(ctx context.Context, c *imapclient.Client, log *slog.Logger, uids []imap.UID) error {
	set := imap.UIDSetNum(uids...)
	switch p.after.Action {
	case config.AfterMove:
		return p.move(c, uids, p.after.Folder)
	case config.AfterKeep:
		if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
			return fmt.Errorf("imap %s: mark seen: %w", p.node, err)
		}
		for _, u := range uids {
			if err := p.memRemember(ctx, p.where(u), "taken"); err != nil {
				log.Error("cannot remember a kept mail; it may be taken again and dropped as a duplicate", "err", err)
			}
			p.known[u] = done
		}
		return nil
	}
	return p.expunge(c, set)
}

// move moves mails into a folder, creating it when the server asks to.
// Without MOVE it copies, and deletes only once the copy succeeded
// (imapclient's own fallback sends COPY, STORE and EXPUNGE at once, so a
// failed COPY would lose the mail).
func (p *Pickup) move(c *imapclient.Client, uids []imap.UID, to string) error {
	set := imap.UIDSetNum(uids...)
	hasMove := c.Caps().Has(imap.CapMove)
	try := func() error {
		if hasMove {
			_, err := c.Move(set, to).Wait()
			return err
		}
		_, err := c.Copy(set, to).Wait()
		return err
	}
	err := try()
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Code == imap.ResponseCodeTryCreate {
		if cerr := c.Create(to, nil).Wait(); cerr != nil {
			return fmt.Errorf("imap %s: create folder %s: %w", p.node, to, cerr)
		}
		err = try()
	}
	if err != nil {
		return fmt.Errorf("imap %s: move to %s: %w", p.node, to, err)
	}
	if !hasMove {
		if err := p.expunge(c, set); err != nil {
			return err
		}
	}
	for _, u := range uids {
		delete(p.known, u)
	}
	return nil
}

// expunge deletes mails: \Deleted, then UID EXPUNGE where the server has
// UIDPLUS (only these mails), else EXPUNGE.
func (p *Pickup) expunge(c *imapclient.Client, set imap.UIDSet) error {
	if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return fmt.Errorf("imap %s: delete: %w", p.node, err)
	}
	var err error
	if c.Caps().Has(imap.CapUIDPlus) {
		err = c.UIDExpunge(set).Close()
	} else {
		err = c.Expunge().Close()
	}
	if err != nil {
		return fmt.Errorf("imap %s: expunge: %w", p.node, err)
	}
	return nil
}

// takeSet joins the parts of a complete set in order and takes the file.
func (p *Pickup) takeSet(ctx context.Context, c *imapclient.Client, t *transfer, out chan<- *message.Message) error {
	log := p.log.With("transfer", t.id, "file", t.file, "parts", t.n)
	if p.after.Action == config.AfterKeep {
		// Kept parts stay in the mailbox: a set taken before (also by an
		// earlier run) is not taken again.
		taken, err := p.keptSet(ctx, t)
		if err != nil {
			return err
		}
		if taken {
			p.takenBefore(ctx, t)
			return nil
		}
	}
	// Each part from a mail the server hands out: a copy the sender sent
	// twice may stand in for one it refuses.
	now := p.now()
	pick := make([]imap.UID, t.n+1)
	for i := 1; i <= t.n; i++ {
		for _, u := range t.parts[i] {
			if sk := p.skipped[u]; sk == nil || sk.due(now) {
				pick[i] = u
				break
			}
		}
		if pick[i] == 0 {
			return nil // tried again when one of them is due
		}
	}
	spooled, err := p.newSpool()
	if err != nil {
		return err
	}
	defer spooled.Release()
	problem := ""
	for i := 1; i <= t.n && problem == ""; i++ {
		uid := pick[i]
		if size := t.sizes[uid]; size > maxMailSize(p.lim) {
			// Not even fetched, as in takeOne.
			problem = fmt.Sprintf("part %d/%d: mail of %d bytes is larger than an exchange file of the %d-byte limit can be", i, t.n, size, p.lim.MaxSize)
			break
		}
		a, err := p.fetchAttachment(c, uid, spooled.File)
		if errors.Is(err, errGone) {
			return nil // the next scan sees the set without it
		}
		if p.unreadable(ctx, uid, fmt.Sprintf("%s part %d/%d", t.file, i, t.n), err) {
			return nil // the set waits for the mail's next try
		}
		if err != nil {
			return err
		}
		delete(p.skipped, uid)
		delete(p.cuts, uid)
		switch {
		case !a.found && a.broken != nil:
			problem = fmt.Sprintf("part %d/%d has no attachment that could be read: %v", i, t.n, a.broken)
		case !a.found:
			problem = fmt.Sprintf("part %d/%d has no attachment", i, t.n)
		case a.undecodable != nil:
			problem = fmt.Sprintf("part %d/%d: attachment does not decode (its Content-Transfer-Encoding): %v", i, t.n, a.undecodable)
		case a.tooBig || spooled.Size+a.size > p.lim.MaxSize:
			problem = fmt.Sprintf("joined parts are larger than the %d-byte limit", p.lim.MaxSize)
		}
		spooled.Size += a.size
	}
	name := t.file
	if !isMessageName(name) {
		name += spooled.Ext()
	}
	log.Debug("parts joined", "bytes", spooled.Size)
	return p.emitSet(ctx, c, log, t, name, t.sha, spooled, problem, out)
}

// emitSet hands a set to the pipeline and forgets it once committed. When
// the commit fails (the error ends the session) the set stays known as
// complete, so the next session's scan takes and commits it again, as it
// does a single mail; JetStream drops the duplicate. Forgetting it first
// left its parts marked inTransfer and never looked at until a restart.
//
// A set taken whole is remembered as finished for part_timeout: a copy of
// one of its parts that comes late is committed like the others.
func (p *Pickup) emitSet(ctx context.Context, c *imapclient.Client, log *slog.Logger, t *transfer, name, sha string, f folder.Fetched, problem string, out chan<- *message.Message) error {
	taken, err := p.emit(ctx, c, log, t.uids(), name, sha, f, problem, out)
	if err != nil {
		return err
	}
	p.endTransfer(t.id)
	if taken {
		p.finish(ctx, t)
	}
	return nil
}

// endTransfer forgets the set id. The parts that disagreed with a set are
// looked at again: theirs may have been this one, and each is then judged
// on its own (a set of its own that times out into a dead letter; found by
// review: they were left in the mailbox for good).
func (p *Pickup) endTransfer(id string) {
	delete(p.transfers, id)
	for u, v := range p.known {
		if v == disagrees {
			delete(p.known, u)
		}
	}
}

// takenBefore leaves the kept parts of a set taken before alone from now on.
func (p *Pickup) takenBefore(ctx context.Context, t *transfer) {
	for _, u := range t.uids() {
		p.known[u] = done
	}
	p.endTransfer(t.id)
	p.finish(ctx, t)
}

// keptSet reports whether every part of t has a mail that after: keep
// remembers as taken.
func (p *Pickup) keptSet(ctx context.Context, t *transfer) (bool, error) {
	n, err := p.keptParts(ctx, t)
	return n == t.n, err
}

// keptParts counts the parts of t that have a mail after: keep remembers
// as taken.
func (p *Pickup) keptParts(ctx context.Context, t *transfer) (int, error) {
	n := 0
	for i := 1; i <= t.n; i++ {
		for _, u := range t.parts[i] {
			seen, err := p.memSeen(ctx, p.where(u), "taken")
			if err != nil {
				return n, err
			}
			if seen {
				n++
				break
			}
		}
	}
	return n, nil
}

// giveUpSet dead-letters a set whose parts did not all arrive in time and
// moves the parts it has to quarantine. Under after: keep, a set with a
// part remembered as taken was taken whole before, and a part of it has
// gone from the mailbox since (deleted by hand, or by the server's
// retention) after the memory of the finished set was given to later
// sets: it is left alone, as a set taken before is (found by review: a
// restart made it an "incomplete" dead letter and moved the user's kept
// mails to quarantine).
func (p *Pickup) giveUpSet(ctx context.Context, c *imapclient.Client, t *transfer, out chan<- *message.Message) error {
	if p.after.Action == config.AfterKeep {
		n, err := p.keptParts(ctx, t)
		if err != nil {
			return err
		}
		if n > 0 {
			p.log.Info("parts of a set taken before, the rest gone from the mailbox: left alone", "transfer", t.id, "file", t.file, "parts", t.n)
			p.takenBefore(ctx, t)
			return nil
		}
	}
	var have []string
	for i := 1; i <= t.n; i++ {
		if len(t.parts[i]) > 0 {
			have = append(have, strconv.Itoa(i))
		}
	}
	problem := fmt.Sprintf("incomplete: only parts %s of %d of %s (transfer %s) arrived within part_timeout %s",
		strings.Join(have, ","), t.n, t.file, t.id, p.cfg.PartTimeout.Std())
	spooled, err := p.newSpool()
	if err != nil {
		return err
	}
	defer spooled.Release()
	return p.emitSet(ctx, c, p.log.With("transfer", t.id), t, withExt(t.file), "", spooled, problem, out)
}

// newSpool makes an empty spool file for one message.
func (p *Pickup) newSpool() (folder.Fetched, error) {
	f, err := folder.Spool(context.Background(), p.spool, strings.NewReader(""), 0)
	if err != nil {
		return f, fmt.Errorf("imap %s: spool: %w", p.node, err)
	}
	return f, nil
}

// attachment is what fetchAttachment found in one mail.
type attachment struct {
	found  bool
	name   string
	size   int64
	tooBig bool
	// broken is why the mail's MIME structure could not be read to its end
	// (nil when it could); an attachment found before the damage stands.
	broken error
	// undecodable is why the attachment's body did not decode to its end
	// (bad base64, such as each line padded on its own): the file is
	// refused with it, not with the content check's "file ends early",
	// which blamed the sender's 1C (found by review).
	undecodable error
}

// fetchAttachment streams one mail and appends its exchange attachment to
// f: the first attachment named Message_*, else the first attachment. The
// mail is never held in memory; \Seen is not set (BODY.PEEK).
func (p *Pickup) fetchAttachment(c *imapclient.Client, uid imap.UID, f *os.File) (attachment, error) {
	var a attachment
	start, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return a, err
	}
	cmd := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	abandoned := false
	defer func() {
		if !abandoned {
			cmd.Close()
		}
	}()
	m := cmd.Next()
	if m == nil {
		if err := cmd.Close(); err != nil {
			return a, fmt.Errorf("imap %s: fetch UID %d: %w", p.node, uid, err)
		}
		return a, errGone
	}
	sawBody := false
	for item := m.Next(); item != nil; item = m.Next() {
		body, ok := item.(imapclient.FetchItemDataBodySection)
		sawBody = sawBody || ok
		if !ok || body.Literal == nil {
			continue
		}
		lit := &srcReader{r: body.Literal}
		size := body.Literal.Size()
		a, err = p.readAttachment(lit, f, start)
		if err == nil {
			_, err = io.Copy(io.Discard, lit)
		}
		if lit.broken(size) {
			abandoned = true
			c.Close()
			if err == nil || lit.err == nil {
				err = fmt.Errorf("mail cut off after %d of %d bytes", lit.n, size)
			}
			err = &cutOff{err}
		}
		if err != nil {
			return a, fmt.Errorf("imap %s: read UID %d: %w", p.node, uid, err)
		}
	}
	if err := cmd.Close(); err != nil {
		return a, fmt.Errorf("imap %s: fetch UID %d: %w", p.node, uid, err)
	}
	if !sawBody {
		// A server's unsolicited FETCH of the mail (its flags changed)
		// taken for the answer, the body passed over: not a mail without
		// attachment (found by review: a good mail quarantined). Like a
		// mail cut off: the next session fetches it again, and one the
		// server never hands out is skipped and shown.
		return a, fmt.Errorf("imap %s: read UID %d: %w", p.node, uid, &cutOff{errors.New("the server's answer held no body of the mail")})
	}
	return a, nil
}

// readAttachment parses a mail from r and copies the chosen attachment to
// f at offset start. A mail that does not parse is not an error: it has no
// attachment, or keeps the one found before the damage, and broken says why.
//
// It walks the MIME tree itself with go-message's header and multipart
// readers rather than go-message's mail reader, for two reasons. The mail
// reader recodes every text/* part that names a charset once
// go-message/charset is imported (as it is here, for subjects): an
// attachment labelled "text/xml; charset=windows-1251" would be rewritten,
// and relay never changes a file. And go-message reads each header whole
// but bounds only the mail's own: here every header is bounded.
func (p *Pickup) readAttachment(r io.Reader, f *os.File, start int64) (attachment, error) {
	var a attachment
	src, ok := r.(*srcReader)
	if !ok {
		src = &srcReader{r: r}
	}
	lim := &headerLimit{r: src, left: -1}
	br := bufio.NewReader(lim)
	// stop ends the walk at a MIME error: one of the connection is the
	// session's, any other is the mail's.
	stop := func(err error) (attachment, error) {
		if src.err != nil {
			return a, src.err
		}
		a.broken = err
		return a, nil
	}
	lim.arm()
	th, err := textproto.ReadHeader(br)
	lim.disarm()
	if err != nil {
		return stop(err)
	}
	// The mail itself is the first entity; each multipart adds a level
	// whose parts are the next ones, in the order they are written.
	h, body := gomessage.Header{Header: th}, io.Reader(br)
	type level struct {
		mr  *textproto.MultipartReader
		cur *textproto.Part
	}
	var levels []*level
	for {
		mediaType, params := partType(h)
		name, candidate := attachmentName(h, mediaType, params)
		switch {
		case strings.HasPrefix(mediaType, "multipart/"):
			if len(levels) < maxMIMEDepth {
				levels = append(levels, &level{mr: textproto.NewMultipartReader(body, params["boundary"])})
			}
		case !candidate:
			// Text for people: not the file.
		case a.found && (isMessageName(a.name) || !isMessageName(name)):
			// The file is found already and this part is no better.
		default:
			// The first attachment, or the first one named like a message
			// after an unnamed one: (re)write it at start.
			found, err := p.copyAttachment(h, body, f, start, src)
			if err != nil {
				return a, err
			}
			if found.found {
				found.name = name
				a = found
			}
		}
		// On to the next entity: the rest of the current part is skipped
		// with no header limit (it is body), then the next header is read
		// under it; a finished multipart hands back to the one around it.
		for {
			if len(levels) == 0 {
				return a, nil
			}
			l := levels[len(levels)-1]
			if l.cur != nil {
				if _, err := io.Copy(io.Discard, l.cur); err != nil {
					return stop(err)
				}
			}
			lim.arm()
			part, err := l.mr.NextPart()
			lim.disarm()
			if err == io.EOF {
				levels = levels[:len(levels)-1]
				continue
			}
			if err != nil {
				return stop(err)
			}
			l.cur = part
			h, body = gomessage.Header{Header: part.Header}, io.Reader(part)
			break
		}
	}
}

// maxMIMEHeader bounds the header of a mail and of each of its parts (with
// the lines before a part's boundary; the few KiB that were buffered ahead
// come on top): no mail client writes one near it, and go-message holds a
// header whole while it reads it.
const maxMIMEHeader = 1 << 20

// maxMIMEDepth bounds how deep multiparts nest (each level holds a buffer);
// a multipart deeper than that is skipped unread.
const maxMIMEDepth = 32

// errHeaderTooBig makes a mail with a larger header malformed.
var errHeaderTooBig = fmt.Errorf("a MIME header is larger than %d bytes", maxMIMEHeader)

// headerLimit passes the mail through, at most maxMIMEHeader bytes while
// armed, that is while a header is read; bodies stream unbounded.
type headerLimit struct {
	r    io.Reader
	left int64 // < 0: disarmed
}

func (l *headerLimit) arm()    { l.left = maxMIMEHeader }
func (l *headerLimit) disarm() { l.left = -1 }

func (l *headerLimit) Read(b []byte) (int, error) {
	if l.left < 0 {
		return l.r.Read(b)
	}
	if l.left == 0 {
		return 0, errHeaderTooBig
	}
	if int64(len(b)) > l.left {
		b = b[:l.left]
	}
	n, err := l.r.Read(b)
	l.left -= int64(n)
	return n, err
}

// attachmentName returns the file name a part carries (Content-Disposition
// filename, else the Content-Type name among cparams) and whether the part
// can be the exchange file. A named part can, whatever its disposition: mail
// clients attach files as "inline; filename=..." or with a name and no
// disposition at all. An unnamed one can when go-message would call it an
// attachment (not inline, and not text unless it says attachment).
func attachmentName(h gomessage.Header, mediaType string, cparams map[string]string) (string, bool) {
	disp, dparams := mediaField(h.Get("Content-Disposition"))
	name := dparams["filename"]
	if name == "" {
		name = cparams["name"]
	}
	if name != "" {
		return name, true
	}
	return "", disp == "attachment" || (disp != "inline" && !strings.HasPrefix(mediaType, "text/"))
}

// partType is the media type of a part and its parameters, as mediaField
// reads them; a part without Content-Type is text/plain.
func partType(h gomessage.Header) (string, map[string]string) {
	v := h.Get("Content-Type")
	if v == "" {
		return "text/plain", map[string]string{}
	}
	return mediaField(v)
}

// mediaField reads a Content-Type or Content-Disposition field: its value
// in lower case and its parameters, RFC 2047 words in them decoded as
// go-message does. Unlike go-message it keeps what a mail client meant
// where mime.ParseMediaType gives up (found by review: the exchange file
// went unseen and the mail was quarantined):
//   - a parameter the standard does not allow, such as an unquoted raw
//     UTF-8 name=Message_ЦО_ОП.xml, fails the whole field there, and
//     go-message then took the raw field for the type: the media type is
//     kept and the parameters are read leniently (lenientParams);
//   - an RFC 2231 name in a charset other than UTF-8 or ASCII (filename*
//     in windows-1251 or koi8-r) is dropped there: it is decoded here with
//     go-message's charsets (extendedParam).
func mediaField(v string) (string, map[string]string) {
	value, params, err := mime.ParseMediaType(v)
	if err != nil {
		if value == "" {
			// No valid type at all: what is written before the first
			// parameter, as go-message would have it (a prefix check on
			// "text/" still works).
			base, _, _ := strings.Cut(v, ";")
			value = strings.ToLower(strings.TrimSpace(base))
		}
		params = lenientParams(v)
	}
	dec := mime.WordDecoder{CharsetReader: charset.Reader}
	for k, p := range params {
		if d, err := dec.DecodeHeader(p); err == nil {
			params[k] = d
		}
	}
	for _, k := range []string{"filename", "name"} {
		if x, ok := extendedParam(v, k); ok && x != "" {
			params[k] = x // one that decodes to nothing leaves the plain one
		}
	}
	return value, params
}

// rawParams splits the parameters of a field at each ';' into names (in
// lower case) and values, with the quotes around a value removed and
// nothing else undone; the first of a name counts. It is the fallback for
// fields mime.ParseMediaType refuses, not a parser: a ';' inside quotes
// ends a value too.
func rawParams(v string) map[string]string {
	params := map[string]string{}
	_, rest, _ := strings.Cut(v, ";")
	for seg := range strings.SplitSeq(rest, ";") {
		key, val, ok := strings.Cut(seg, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		if !ok || key == "" {
			continue
		}
		val = strings.TrimSpace(val)
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		if _, dup := params[key]; !dup {
			params[key] = val
		}
	}
	return params
}

// lenientParams is rawParams without RFC 2231 (name*) parameters, each
// value made valid UTF-8 (a raw 8-bit name in another charset keeps its
// ASCII letters).
func lenientParams(v string) map[string]string {
	params := rawParams(v)
	for k, p := range params {
		if strings.Contains(k, "*") {
			delete(params, k)
			continue
		}
		params[k] = strings.ToValidUTF8(p, "\uFFFD")
	}
	return params
}

// extendedParam decodes the RFC 2231 parameter key (key*=charset'lang'value,
// or continued as key*0*=..., key*1*=..., key*2=...) of field v: its
// percent escapes undone and its charset converted to UTF-8 with
// go-message's charsets. ok is false when v has none, or one that does not
// decode (an unknown charset, a bad escape).
func extendedParam(v, key string) (string, bool) {
	raw := rawParams(v)
	var pieces []string // each percent-encoded but the plain continuations
	var plain []bool
	if x, ok := raw[key+"*"]; ok {
		pieces, plain = []string{x}, []bool{false}
	} else if x, ok := raw[key+"*0*"]; ok {
		pieces, plain = []string{x}, []bool{false}
		for n := 1; ; n++ {
			if x, ok := raw[key+"*"+strconv.Itoa(n)+"*"]; ok {
				pieces, plain = append(pieces, x), append(plain, false)
			} else if x, ok := raw[key+"*"+strconv.Itoa(n)]; ok {
				pieces, plain = append(pieces, x), append(plain, true)
			} else {
				break
			}
		}
	} else {
		return "", false
	}
	cs, rest, ok := strings.Cut(pieces[0], "'")
	if !ok {
		return "", false
	}
	if _, pieces[0], ok = strings.Cut(rest, "'"); !ok {
		return "", false
	}
	var b strings.Builder
	for i, p := range pieces {
		if !plain[i] {
			var err error
			if p, err = url.PathUnescape(p); err != nil {
				return "", false
			}
		}
		b.WriteString(p)
	}
	text := b.String()
	switch strings.ToLower(cs) {
	case "", "utf-8", "us-ascii":
		return strings.ToValidUTF8(text, "\uFFFD"), true
	}
	r, err := charset.Reader(cs, strings.NewReader(text))
	if err != nil {
		return "", false
	}
	d, err := io.ReadAll(r)
	if err != nil {
		return "", false
	}
	return strings.ToValidUTF8(string(d), "\uFFFD"), true
}

// copyAttachment writes the body of a part to f at start. Only its transfer
// encoding (base64, quoted-printable) is undone: go-message is given a
// header that names nothing else, so it never converts a charset. A part
// in an encoding go-message does not know is not taken (found is false).
func (p *Pickup) copyAttachment(h gomessage.Header, body io.Reader, f *os.File, start int64, src *srcReader) (attachment, error) {
	var eh gomessage.Header
	if enc := h.Get("Content-Transfer-Encoding"); enc != "" {
		eh.Set("Content-Transfer-Encoding", enc)
	}
	e, err := gomessage.New(eh, body)
	if err != nil {
		p.log.Debug("attachment in an unknown transfer encoding skipped", "err", err)
		return attachment{}, nil
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return attachment{}, err
	}
	if err := f.Truncate(start); err != nil {
		return attachment{}, err
	}
	w := &spoolWriter{w: f}
	n, err := io.CopyBuffer(w, io.LimitReader(e.Body, p.lim.MaxSize+1), make([]byte, 256<<10))
	if src.err != nil {
		return attachment{}, src.err
	}
	if w.err != nil {
		return attachment{}, w.err // the spool, not the mail
	}
	a := attachment{found: true, size: n, tooBig: n > p.lim.MaxSize}
	var corrupt base64.CorruptInputError
	switch {
	case err == nil:
	case errors.As(err, &corrupt) || strings.HasPrefix(err.Error(), "quotedprintable:"):
		a.undecodable = err
	default:
		// A part cut short and the like: the content check says so.
		p.log.Debug("attachment did not decode to its end", "err", err)
	}
	return a, nil
}

// spoolWriter remembers a failed write to the spool file.
type spoolWriter struct {
	w   io.Writer
	err error
}

func (s *spoolWriter) Write(b []byte) (int, error) {
	n, err := s.w.Write(b)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// srcReader is the mail as the server sends it. It remembers the first
// error of the connection itself: the MIME and transfer decoders above it
// turn a cut-short part or base64 into io.ErrUnexpectedEOF as well, which is
// the mail's own fault (a dead letter), while an error here is the
// session's (a retry). Once a read has failed (io.EOF included) it never
// reads again: imapclient lets its reader go on as soon as a literal read
// fails, and another read of a literal cut short would race with it.
type srcReader struct {
	r   io.Reader
	n   int64
	err error
	end error // the error that ended the reading, io.EOF included
}

func (s *srcReader) Read(b []byte) (int, error) {
	if s.end != nil {
		return 0, s.end
	}
	n, err := s.r.Read(b)
	s.n += int64(n)
	if err != nil {
		s.end = err
		if err != io.EOF && s.err == nil {
			s.err = err
		}
	}
	return n, err
}

// cutOff is a fetch whose mail the connection broke off in the middle of.
type cutOff struct{ err error }

func (c *cutOff) Error() string { return c.err.Error() }

func (c *cutOff) Unwrap() error { return c.err }

// broken reports a literal of size bytes that ended before its end: the
// connection failed, and the FETCH must be left as it is (closing it would
// read the literal on; see srcReader) and the session ended.
func (s *srcReader) broken(size int64) bool {
	return s.end != nil && (s.end != io.EOF || s.n != size)
}

// withExt names a file whose content is unknown: as is when it has an
// extension, else as .xml.
func withExt(name string) string {
	if isMessageName(name) {
		return name
	}
	return name + ".xml"
}

func isMessageName(name string) bool {
	_, err := exchange.ParseName(name)
	return err == nil
}

// dialIMAP opens an authenticated session: connect, TLS (implicit or
// STARTTLS), LOGIN. Pickup and `relay check` share it. The progressConn
// under the client is returned for the pickup to mark its waits.
func dialIMAP(ctx context.Context, s *Server, t target, tc *tls.Config, log *slog.Logger, h *imapclient.UnilateralDataHandler) (*imapclient.Client, *progressConn, error) {
	pass, err := s.password()
	if err != nil {
		return nil, nil, err
	}
	if s.InsecureSkipVerify && t.tls() {
		log.Warn("TLS certificate checks are off (insecure_skip_verify)")
	}
	d := net.Dialer{Timeout: s.ConnectTimeout.Std()}
	tcp, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", t.addr, err)
	}
	// Under TLS too: the TLS layer sets its deadlines on, and reads
	// through, this one.
	raw := &progressConn{Conn: tcp, idle: s.IOTimeout.Std()}
	opts := &imapclient.Options{
		TLSConfig:             tc,
		UnilateralDataHandler: h,
		WordDecoder:           &mime.WordDecoder{CharsetReader: charset.Reader},
	}
	tcp.SetDeadline(time.Now().Add(s.ConnectTimeout.Std()))
	// raw's progress deadlines would let a server that trickles bytes
	// hold the greeting and login for ever: connect_timeout bounds them
	// as a whole.
	loginTimer := time.AfterFunc(s.ConnectTimeout.Std(), func() { tcp.Close() })
	// And the relay stopping ends them at once (go-imap's greeting and
	// login watch no context).
	stopOnCtx := context.AfterFunc(ctx, func() { tcp.Close() })
	var c *imapclient.Client
	switch {
	case t.implicitTLS:
		tconn := tls.Client(raw, tc)
		if err = tconn.HandshakeContext(ctx); err != nil {
			err = fmt.Errorf("tls handshake: %w", err)
			break
		}
		c = imapclient.New(tconn, opts)
	case t.startTLS:
		if c, err = imapclient.NewStartTLS(raw, opts); err != nil {
			err = fmt.Errorf("STARTTLS: %w", err)
		}
	default:
		c = imapclient.New(raw, opts)
	}
	if err == nil {
		if err = c.WaitGreeting(); err != nil {
			err = fmt.Errorf("greeting: %w", err)
		}
	}
	if err == nil {
		if err = c.Login(t.user, pass).Wait(); err != nil {
			err = fmt.Errorf("LOGIN as %s: %w", t.user, err)
		}
	}
	if !stopOnCtx() {
		err = errors.Join(err, ctx.Err())
	}
	if !loginTimer.Stop() && ctx.Err() == nil {
		err = fmt.Errorf("greeting and login took longer than connect_timeout (%s): %w", s.ConnectTimeout.Std(), errors.Join(err, os.ErrDeadlineExceeded))
	}
	// imapclient has set the read deadline since its first read (through
	// raw); the write deadline is still the one for login.
	tcp.SetWriteDeadline(time.Time{})
	if err != nil {
		if c != nil {
			c.Close()
		} else {
			raw.Close()
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	return c, raw, nil
}

// progressConn is the connection under imapclient. It turns every read
// deadline imapclient sets into a deadline for progress: a read fails only
// when no byte arrived for idle (io_timeout), renewed by each read that
// brings data, however long the whole response takes. imapclient gives a
// whole literal (a mail of any size) one fixed 5 minutes and any other
// response 30 seconds: a mail that took longer to download on a slow link
// failed every time, and every mail behind it waited.
//
// imapclient clears the deadline between responses and waits for the first
// byte of the next one with none. A command sent makes that wait a
// progress deadline too (found by review: a server that took a command and
// never answered held the session for ever): from the write on, until the
// pickup marks the session waiting (IDLE, poll_interval, the pipeline),
// no byte for idle ends the session. While waiting, a zero deadline stays
// zero: a quiet server is what the wait is for.
type progressConn struct {
	net.Conn
	idle time.Duration

	mu      sync.Mutex
	armed   bool // imapclient wants a deadline: renew it on progress
	expect  bool // a command was sent since the last wait: a reply is due
	waiting bool // the pickup waits for something other than a reply
	// wroteWaiting: something was written while waiting (go-imap
	// restarting IDLE on its own, every 28 minutes): its reply is due
	// once the wait ends.
	wroteWaiting bool
}

// SetReadDeadline arms the progress deadline (any non-zero t) or clears it;
// a cleared one stays a progress deadline while a reply is due.
func (c *progressConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = !t.IsZero()
	if !c.armed && !c.expect {
		return c.Conn.SetReadDeadline(time.Time{})
	}
	return c.Conn.SetReadDeadline(time.Now().Add(c.idle))
}

// SetDeadline is SetReadDeadline for reads; writes keep t as it is.
func (c *progressConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// Write sends a command (or its part): unless the session is waiting, its
// reply is due from now on, and the read that waits for it gets a progress
// deadline.
func (c *progressConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.wroteWaiting = c.wroteWaiting || c.waiting
	if !c.waiting {
		c.expect = true
		if !c.armed {
			if err := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
				c.mu.Unlock()
				return 0, fmt.Errorf("arm the reply deadline: %w", err)
			}
		}
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// pause stops counting the server's silence while the pickup does work
// of its own between commands (a pickup-memory lookup in JetStream); the
// func it returns counts again, from then, if a reply was due (found by
// review: a slow lookup with a short io_timeout ended every session).
func (c *progressConn) pause() (resume func()) {
	if c == nil {
		return func() {}
	}
	c.mu.Lock()
	expect, waiting := c.expect, c.waiting
	c.expect, c.waiting = false, true
	if !c.armed {
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.waiting = waiting
		if expect || c.wroteWaiting && !waiting {
			c.expect, c.wroteWaiting = true, false
			if !c.armed {
				_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
			}
		}
	}
}

// wait marks the session waiting for something other than a reply (on)
// or done with it (off). Waiting clears a due reply's deadline; what is
// written while waiting (IDLE's restarts) expects none.
func (c *progressConn) wait(on bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiting = on
	if on {
		c.expect, c.wroteWaiting = false, false
		if !c.armed {
			// Ends the progress deadline of a read already waiting; an
			// error here shows on that read.
			_ = c.Conn.SetReadDeadline(time.Time{})
		}
		return
	}
	if c.wroteWaiting {
		// IDLE restarted meanwhile: a server that never answered it
		// would hold the end of IDLE for ever (found by review).
		c.expect, c.wroteWaiting = true, false
		if !c.armed {
			_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
		}
	}
}

// Read reads, and pushes an armed deadline on when data came.
func (c *progressConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		if c.armed || c.expect {
			if derr := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); derr != nil && err == nil {
				err = derr
			}
		}
		c.mu.Unlock()
	}
	return n, err
}
