package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
	wake      chan struct{}
}

// verdict is what the pickup decided about a mail it has looked at.
type verdict int

const (
	ignored    verdict = iota + 1 // not an exchange mail, or from a stranger: never touched
	inTransfer                    // a part, waiting for its set
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
	first time.Time
}

func (t *transfer) complete() bool { return len(t.parts) == t.n }

func (t *transfer) uids() []imap.UID {
	var all []imap.UID
	for _, u := range t.parts {
		all = append(all, u...)
	}
	slices.Sort(all)
	return all
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
		lim: exchange.DefaultLimits(), pattern: pattern,
		log:   log.With("node", node, "adapter", "imap", "mailbox", t.display),
		now:   time.Now,
		known: map[imap.UID]verdict{}, transfers: map[string]*transfer{},
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
	c, err := dialIMAP(ctx, &p.cfg.Server, p.t, p.tc, p.log, &imapclient.UnilateralDataHandler{
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
	}
	for {
		if err := p.scan(ctx, c, out); err != nil {
			return worked, err
		}
		if !worked {
			worked = true
			p.Last.Set(nil)
		}
		if err := p.wait(ctx, c); err != nil {
			return worked, err
		}
		if p.Stopped(ctx) {
			return worked, nil
		}
	}
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
	select {
	case <-p.wake:
	case <-timer.C:
	case <-ctx.Done():
	case <-p.Closing():
	case <-c.Closed():
	}
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
	present := make(map[imap.UID]bool, len(uids))
	var fresh []imap.UID
	for _, u := range uids {
		present[u] = true
		if _, ok := p.known[u]; !ok {
			fresh = append(fresh, u)
		}
	}
	for u := range p.known {
		if !present[u] {
			delete(p.known, u)
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
			delete(p.transfers, id)
		}
	}
	var singles []candidate
	for start := 0; start < len(fresh); start += headerBatch {
		batch := fresh[start:min(start+headerBatch, len(fresh))]
		s, err := p.classify(c, batch)
		if err != nil {
			return err
		}
		singles = append(singles, s...)
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
		case p.now().Sub(t.first) > p.cfg.PartTimeout.Std():
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

// maxHeaderFields bounds the header fields fetched to classify one mail.
const maxHeaderFields = 64 << 10

// classify fetches the few header fields that decide what a mail is and
// records the verdict; it returns the single-file exchange mails.
func (p *Pickup) classify(c *imapclient.Client, uids []imap.UID) ([]candidate, error) {
	section := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: pickupHeaders, Peek: true}
	cmd := c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{UID: true, RFC822Size: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{section}})
	defer cmd.Close()
	var singles []candidate
	for m := cmd.Next(); m != nil; m = cmd.Next() {
		var (
			uid     imap.UID
			size    int64
			arrived time.Time
			hdr     gomail.Header
			hdrErr  error
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
				var h textproto.Header
				h, hdrErr = textproto.ReadHeader(bufio.NewReader(io.LimitReader(it.Literal, maxHeaderFields)))
				hdr = gomail.Header{Header: gomessage.Header{Header: h}}
				_, _ = io.Copy(io.Discard, it.Literal)
			}
		}
		if uid == 0 {
			continue
		}
		if hdrErr != nil {
			p.known[uid] = ignored
			p.log.Info("mail with an unreadable header left alone", "uid", uid, "err", hdrErr)
			continue
		}
		subject, _ := hdr.Subject()
		file := subjectFile(subject, p.pattern)
		if file == "" {
			p.known[uid] = ignored
			continue
		}
		var partFile string
		if hdr.Get(HeaderPart) != "" {
			partFile, _ = hdr.Text(HeaderFile)
		}
		if fromOtherNode(file, p.node) || fromOtherNode(partFile, p.node) {
			// A message for this node (or a third one) in a mailbox its 1C
			// shares: taking it would dead-letter it and, with after:
			// delete, remove it before the 1C it is meant for has read it.
			p.known[uid] = ignored
			p.log.Debug("another node's exchange mail left alone", "uid", uid, "subject", subject)
			continue
		}
		from := ""
		if addrs, err := hdr.AddressList("From"); err == nil && len(addrs) > 0 {
			from = addrs[0].Address
		}
		if !p.cfg.allowed(from) {
			p.known[uid] = ignored
			p.log.Warn("exchange mail from a sender not in allowed_senders left alone", "uid", uid, "from", from, "subject", subject)
			continue
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
				p.addPart(uid, id, name, sha, pt, arrived, size)
				continue
			}
			p.log.Warn("part mail with bad part headers; taken as a single mail", "uid", uid, "part", v, "transfer", id)
		}
		singles = append(singles, candidate{uid: uid, file: file, sha: sha, size: size})
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("imap %s: fetch headers: %w", p.node, err)
	}
	slices.SortFunc(singles, func(a, b candidate) int { return int(a.uid) - int(b.uid) })
	return singles, nil
}

func (p *Pickup) addPart(uid imap.UID, id, file, sha string, pt part, arrived time.Time, size int64) {
	t := p.transfers[id]
	if t == nil {
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
		p.known[uid] = ignored
		return
	}
	if !arrived.IsZero() && arrived.Before(t.first) {
		t.first = arrived
	}
	t.parts[pt.i] = append(t.parts[pt.i], uid)
	t.sizes[uid] = size
	p.known[uid] = inTransfer
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
		seen, err := p.mem.Seen(ctx, where, "taken")
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
		return p.emit(ctx, c, log, []imap.UID{m.uid}, withExt(m.file), "", spooled,
			fmt.Sprintf("mail of %d bytes is larger than an exchange file of the %d-byte limit can be", m.size, p.lim.MaxSize), out)
	}
	attach, err := p.fetchAttachment(c, m.uid, spooled.File)
	if errors.Is(err, errGone) {
		return nil
	}
	if err != nil {
		return err
	}
	spooled.Size = attach.size
	name, problem := m.file, ""
	switch {
	case !attach.found && attach.broken != nil:
		problem = fmt.Sprintf("mail has no attachment that could be read: %v", attach.broken)
	case !attach.found:
		problem = "mail has no attachment"
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
	return p.emit(ctx, c, log, []imap.UID{m.uid}, name, m.sha, spooled, problem, out)
}

// maxMailSize is the largest mail that can carry a file within lim: base64
// grows it by 78/57, and 1 MiB is left for headers and other parts.
func maxMailSize(lim exchange.Limits) int64 {
	return lim.MaxSize/57*78 + 1<<20
}

// emit hands one exchange file to the pipeline and commits its mails.
func (p *Pickup) emit(ctx context.Context, c *imapclient.Client, log *slog.Logger, uids []imap.UID, name, sha string, f folder.Fetched, problem string, out chan<- *message.Message) error {
	where := p.where(uids[0])
	msg, bad := folder.NewMessage(p.node, where, name, f, p.lim, p.pw)
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
	switch folder.Hand(ctx, p.Closing(), out, msg) {
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
		return nil
	default:
		return nil
	}
	if problem != "" {
		log.Warn("malformed exchange mail moved to quarantine", "file", name, "reason", problem, "folder", p.cfg.Quarantine)
		err := p.move(c, uids, p.cfg.Quarantine)
		var ie *imap.Error
		if errors.As(err, &ie) {
			// The server refuses the folder (not allowed to create it, a
			// namespace prefix): the dead letter is stored, so leave the
			// mail where it is rather than end the session and take it,
			// and only it, again and again.
			p.Last.Set(err)
			log.Error("cannot move the malformed mail to quarantine; it stays in the mailbox", "err", err)
			for _, u := range uids {
				p.known[u] = done
			}
			return nil
		}
		return err
	}
	return p.commit(ctx, c, log, uids)
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
			if err := p.mem.Remember(ctx, p.where(u), "taken"); err != nil {
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
			for _, u := range t.uids() {
				p.known[u] = done
			}
			delete(p.transfers, t.id)
			return nil
		}
	}
	spooled, err := p.newSpool()
	if err != nil {
		return err
	}
	defer spooled.Release()
	problem := ""
	for i := 1; i <= t.n && problem == ""; i++ {
		uid := t.parts[i][0]
		if size := t.sizes[uid]; size > maxMailSize(p.lim) {
			// Not even fetched, as in takeOne.
			problem = fmt.Sprintf("part %d/%d: mail of %d bytes is larger than an exchange file of the %d-byte limit can be", i, t.n, size, p.lim.MaxSize)
			break
		}
		a, err := p.fetchAttachment(c, uid, spooled.File)
		if errors.Is(err, errGone) {
			return nil // the next scan sees the set without it
		}
		if err != nil {
			return err
		}
		switch {
		case !a.found && a.broken != nil:
			problem = fmt.Sprintf("part %d/%d has no attachment that could be read: %v", i, t.n, a.broken)
		case !a.found:
			problem = fmt.Sprintf("part %d/%d has no attachment", i, t.n)
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
func (p *Pickup) emitSet(ctx context.Context, c *imapclient.Client, log *slog.Logger, t *transfer, name, sha string, f folder.Fetched, problem string, out chan<- *message.Message) error {
	if err := p.emit(ctx, c, log, t.uids(), name, sha, f, problem, out); err != nil {
		return err
	}
	delete(p.transfers, t.id)
	return nil
}

// keptSet reports whether every part of t has a mail that after: keep
// remembers as taken.
func (p *Pickup) keptSet(ctx context.Context, t *transfer) (bool, error) {
	for i := 1; i <= t.n; i++ {
		kept := false
		for _, u := range t.parts[i] {
			seen, err := p.mem.Seen(ctx, p.where(u), "taken")
			if err != nil {
				return false, err
			}
			if seen {
				kept = true
				break
			}
		}
		if !kept {
			return false, nil
		}
	}
	return true, nil
}

// giveUpSet dead-letters a set whose parts did not all arrive in time and
// moves the parts it has to quarantine.
func (p *Pickup) giveUpSet(ctx context.Context, c *imapclient.Client, t *transfer, out chan<- *message.Message) error {
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
	defer cmd.Close()
	m := cmd.Next()
	if m == nil {
		if err := cmd.Close(); err != nil {
			return a, fmt.Errorf("imap %s: fetch UID %d: %w", p.node, uid, err)
		}
		return a, errGone
	}
	for item := m.Next(); item != nil; item = m.Next() {
		body, ok := item.(imapclient.FetchItemDataBodySection)
		if !ok || body.Literal == nil {
			continue
		}
		lit := &srcReader{r: body.Literal}
		a, err = p.readAttachment(lit, f, start)
		if err != nil {
			return a, fmt.Errorf("imap %s: read UID %d: %w", p.node, uid, err)
		}
		if _, err := io.Copy(io.Discard, lit); err != nil {
			return a, fmt.Errorf("imap %s: read UID %d: %w", p.node, uid, err)
		}
		if size := body.Literal.Size(); lit.n != size {
			return a, fmt.Errorf("imap %s: read UID %d: mail cut off after %d of %d bytes", p.node, uid, lit.n, size)
		}
	}
	if err := cmd.Close(); err != nil {
		return a, fmt.Errorf("imap %s: fetch UID %d: %w", p.node, uid, err)
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
		mediaType, params, _ := h.ContentType()
		name, candidate := attachmentName(h, mediaType)
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
// filename, else Content-Type name) and whether the part can be the
// exchange file. A named part can, whatever its disposition: mail clients
// attach files as "inline; filename=..." or with a name and no disposition
// at all. An unnamed one can when go-message would call it an attachment
// (not inline, and not text unless it says attachment).
func attachmentName(h gomessage.Header, mediaType string) (string, bool) {
	disp, dparams, _ := h.ContentDisposition()
	name := dparams["filename"]
	if name == "" {
		_, cparams, _ := h.ContentType()
		name = cparams["name"]
	}
	if name != "" {
		return name, true
	}
	return "", disp == "attachment" || (disp != "inline" && !strings.HasPrefix(mediaType, "text/"))
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
	if err != nil {
		// Bad base64 and the like: the content check will say so.
		p.log.Debug("attachment did not decode to its end", "err", err)
	}
	return attachment{found: true, size: n, tooBig: n > p.lim.MaxSize}, nil
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
// session's (a retry).
type srcReader struct {
	r   io.Reader
	n   int64
	err error
}

func (s *srcReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	s.n += int64(n)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
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
// STARTTLS), LOGIN. Pickup and `relay check` share it.
func dialIMAP(ctx context.Context, s *Server, t target, tc *tls.Config, log *slog.Logger, h *imapclient.UnilateralDataHandler) (*imapclient.Client, error) {
	pass, err := s.password()
	if err != nil {
		return nil, err
	}
	if s.InsecureSkipVerify && t.tls() {
		log.Warn("TLS certificate checks are off (insecure_skip_verify)")
	}
	d := net.Dialer{Timeout: s.ConnectTimeout.Std()}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", t.addr, err)
	}
	opts := &imapclient.Options{
		TLSConfig:             tc,
		UnilateralDataHandler: h,
		WordDecoder:           &mime.WordDecoder{CharsetReader: charset.Reader},
	}
	raw.SetDeadline(time.Now().Add(s.ConnectTimeout.Std()))
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
	raw.SetDeadline(time.Time{})
	if err != nil {
		if c != nil {
			c.Close()
		} else {
			raw.Close()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return c, nil
}
