package mail

import (
	"archive/zip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/exchange"
)

// Publisher is an SMTP delivery: Publish returns only after the server
// accepted every mail of the message (250 after DATA). A file whose mail
// would exceed the size limit goes as parts; parts the server already
// accepted are not sent again when a later part fails and the delivery is
// retried.
type Publisher struct {
	node  string
	cfg   SMTPConfig
	t     target
	tc    *tls.Config
	spool string
	log   *slog.Logger
	now   func() time.Time

	trouble.Last

	mu sync.Mutex
	// sent remembers, per transfer, the parts a server accepted, so a retry
	// after a failed part sends only the rest.
	sent map[string]*sentParts
}

// sentParts are the parts of one transfer a server accepted, and when
// the latest copy of part 1 was sent.
type sentParts struct {
	parts map[int]bool
	part1 time.Time
}

// resendAfter is how long after the latest copy of part 1 went out a retry
// still sends only the missing parts; later it begins the set again and
// sends them all. The receiver waits part_timeout (24 h by default, to be
// kept well above this hour) from the latest copy of part 1 it got, then
// gives the set up as a dead letter: parts sent after that would make a
// set that never completes, and the message would be lost while this side
// counted it delivered. A part that arrives twice is joined once.
const resendAfter = time.Hour

// refreshAfter is how long after the latest copy of part 1 a retry sends
// part 1 once more before the missing parts: that copy restarts the
// receiver's part_timeout, so a set that keeps getting parts through (a
// server taking a few mails at a time) slides its hour along and completes
// however long it needs, instead of beginning again from part 1 every hour
// and never completing (found by review: 1 mail a minute, 100 parts).
const refreshAfter = resendAfter / 2

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher makes the delivery of node to a mailbox over SMTP; spool is
// where compress: zip packs files. It does not connect: the first delivery
// does, so a server that is down at start only delays that node.
func NewPublisher(node string, cfg SMTPConfig, spool string, log *slog.Logger) (*Publisher, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	t, err := cfg.target()
	if err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig(t.host)
	if err != nil {
		return nil, fmt.Errorf("smtp %s: %w", node, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Zips a killed relay left behind are as large as their messages.
	olds, _ := filepath.Glob(filepath.Join(spool, smtpSpoolPattern))
	for _, f := range olds {
		_ = os.Remove(f)
	}
	return &Publisher{
		node: node, cfg: cfg, t: t, tc: tc, spool: spool,
		log: log.With("node", node, "adapter", "smtp", "server", t.display),
		now: time.Now, sent: map[string]*sentParts{},
	}, nil
}

// Publish delivers each message; the topic is ignored (one destination).
func (p *Publisher) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		err := p.deliver(m.Context(), m)
		p.Last.Set(err)
		if err != nil {
			return err
		}
	}
	return nil
}

// Close has nothing to release: each delivery has its own session.
func (p *Publisher) Close() error { return nil }

// outgoing is one exchange file as it is sent.
type outgoing struct {
	name string
	h    exchange.Header
	size int64
	sha  string
	body io.Reader
}

func (p *Publisher) deliver(ctx context.Context, m *message.Message) error {
	d, err := exchange.OpenDelivery(ctx, m, "smtp "+p.node)
	if err != nil {
		return err
	}
	defer d.Body.Close()
	name, h := d.Name, d.Header
	out := outgoing{name: name, h: h, size: d.Size, sha: d.SHA256, body: folder.CtxReader{Ctx: ctx, R: d.Body}}
	if p.cfg.Compress == "zip" && strings.EqualFold(name[len(name)-4:], ".xml") {
		zipped, release, err := p.zip(ctx, out)
		if err != nil {
			return fmt.Errorf("smtp %s: %s: compress: %w", p.node, name, err)
		}
		defer release()
		out = zipped
	}

	c, closeSession, err := dialSMTP(ctx, &p.cfg, p.t, p.tc, p.log)
	if err != nil {
		return fmt.Errorf("smtp %s: %w", p.node, err)
	}
	defer closeSession()
	limit := int64(p.cfg.MaxMessageSize)
	if s, ok := c.MaxMessageSize(); ok && s > 0 && int64(s) < limit {
		limit = int64(s)
	}
	if limit < minMessageSize {
		return fmt.Errorf("smtp %s: the server accepts mails of at most %d bytes (SIZE), too small to carry exchange files", p.node, limit)
	}
	per := rawPerMail(limit)
	if out.size <= per {
		if err := p.send(c, out, part{1, 1}, "", &exactReader{r: io.LimitReader(out.body, out.size+1), left: out.size}, out.name); err != nil {
			return err
		}
	} else if err := p.sendParts(c, out, per); err != nil {
		return err
	}
	_ = c.Quit()
	p.log.Debug("delivered", "message_id", m.UUID, "file", out.name, "message_no", h.MessageNo, "bytes", out.size)
	return nil
}

// sendParts sends a file as ceil(size/per) mails of per bytes each.
func (p *Publisher) sendParts(c *smtp.Client, out outgoing, per int64) error {
	n := int((out.size + per - 1) / per)
	if n > maxParts {
		return exchange.Permanent(fmt.Errorf("smtp %s: %s: %d bytes would need %d parts of %d bytes (at most %d)", p.node, out.name, out.size, n, per, maxParts))
	}
	// The id names this cutting: a retry under another limit starts a new
	// transfer rather than add parts cut at other offsets to this one.
	tid := transferID(out.h, out.sha, n, per)
	p.mu.Lock()
	sp := p.sent[tid]
	if sp == nil || p.now().Sub(sp.part1) > resendAfter {
		if sp == nil && len(p.sent) >= maxTransfersRemembered {
			clear(p.sent) // transfers given up long ago; at worst parts are sent again
		}
		sp = &sentParts{parts: map[int]bool{}}
		p.sent[tid] = sp
	}
	done := sp.parts
	if done[1] && p.now().Sub(sp.part1) > refreshAfter {
		delete(done, 1) // its copy goes out first again: see refreshAfter
	}
	p.mu.Unlock()
	accepted := 0 // parts this try got through
	for i := 1; i <= n; i++ {
		want := min(per, out.size-int64(i-1)*per)
		limit := want
		if i == n {
			// Past the end: the object store proves the sha256 there, and
			// a file a whole number of parts long never got that far
			// (found by review: a damaged one counted as delivered).
			limit++
		}
		chunk := &countingReader{r: io.LimitReader(out.body, limit)}
		p.mu.Lock()
		skip := done[i]
		stale := !skip && accepted > 0 && done[1] && p.now().Sub(sp.part1) > refreshAfter
		p.mu.Unlock()
		if stale {
			// A try as long as this (a slow line) must refresh part 1
			// as a retry does, or the next would find it older than
			// resendAfter and begin the set again, for ever (found by
			// review). The next try sends it first and goes on here.
			return exchange.Progressed(fmt.Errorf("smtp %s: %s: part 1/%d went out %s ago; it goes out again before part %d/%d", p.node, out.name, n, p.now().Sub(sp.part1).Round(time.Minute), i, n))
		}
		if skip {
			if _, err := io.Copy(io.Discard, chunk); err != nil {
				return fmt.Errorf("smtp %s: %s: read body: %w", p.node, out.name, err)
			}
		} else if err := p.send(c, out, part{i, n}, tid, &exactReader{r: chunk, left: want}, fmt.Sprintf("%s.%03d", out.name, i)); err != nil {
			if accepted > 0 && !exchange.IsPermanent(err) {
				// This try got parts through: the next goes on soon, or a
				// server that takes a few mails at a time (a rate limit)
				// never saw the set whole within resendAfter, the waits
				// between tries growing to minutes (found by review).
				err = exchange.Progressed(err)
			}
			return err
		}
		if chunk.n != want {
			return fmt.Errorf("smtp %s: %s: part %d/%d: read %d bytes from the object store, want %d", p.node, out.name, i, n, chunk.n, want)
		}
		p.mu.Lock()
		done[i] = true
		if i == 1 && !skip {
			// From the end of its upload, no later than its arrival
			// either: a part that takes longer than refreshAfter to send
			// (a slow line) would else make part 1 due again at once,
			// and every try would send part 1 only (found by review).
			sp.part1 = p.now()
		}
		p.mu.Unlock()
		if !skip {
			accepted++
			p.log.Debug("part sent", "file", out.name, "part", part{i, n}.String(), "transfer", tid)
		}
	}
	p.mu.Lock()
	delete(p.sent, tid)
	p.mu.Unlock()
	return nil
}

// maxTransfersRemembered bounds the memory of partly sent transfers (one
// entry per split file whose delivery failed midway and was not retried yet).
const maxTransfersRemembered = 1000

// rawPerMail is how many file bytes fit in a mail of limit bytes: base64
// turns 57 bytes into a 78-byte line, and 16 KiB are left for the headers
// and the text part.
func rawPerMail(limit int64) int64 {
	per := (limit - 16<<10) / 78 * 57
	return max(per, 57)
}

// send runs one mail transaction: MAIL, RCPT for each recipient, DATA.
// tid is the transfer id of a part, "" for a whole file.
func (p *Publisher) send(c *smtp.Client, out outgoing, pt part, tid string, r io.Reader, attachName string) error {
	from, rcpts := p.cfg.envelope()
	if err := c.Mail(from, nil); err != nil {
		return p.fail("MAIL FROM "+from, err, false)
	}
	for _, to := range rcpts {
		if err := c.Rcpt(to, nil); err != nil {
			return p.fail("RCPT TO "+to, err, true)
		}
	}
	w, err := c.Data()
	if err != nil {
		return p.fail("DATA", err, true)
	}
	if err := p.write(w, out, pt, tid, r, attachName); err != nil {
		// Never end DATA on a broken mail: dropping the connection makes
		// the server discard the transaction.
		_ = c.Close()
		return fmt.Errorf("smtp %s: %s: write mail: %w", p.node, out.name, err)
	}
	if err := w.Close(); err != nil {
		what := "end of DATA"
		if pt.n > 1 {
			what += " (part " + pt.String() + ")"
		}
		return p.fail(what, err, true)
	}
	return nil
}

// fail names the failing step; a 5xx reply to a message's own transaction
// (RCPT, DATA) is permanent and dead-letters the message with the server's
// words. Earlier steps fail for every message alike (wrong password, server
// trouble): those are retried, and the endpoint shows as failing.
func (p *Publisher) fail(step string, err error, perMessage bool) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e := fmt.Errorf("smtp %s: %s: %d %s", p.node, step, se.Code, oneLine(se.Message))
		if se.Code >= 500 && perMessage {
			return exchange.Permanent(e)
		}
		return e
	}
	return fmt.Errorf("smtp %s: %s: %w", p.node, step, err)
}

// address parses a validated from or to: the envelope takes its bare
// address, the header keeps the display name. A domain in another script
// (склад.рф) goes in its ASCII form (xn--80aiqe2a.xn--p1ai): a server
// without SMTPUTF8 refuses the raw one with a 5xx (found by review: every
// message to such a node was a dead letter), and the mail stays 7-bit.
func address(s string) *gomail.Address {
	a, err := gomail.ParseAddress(s)
	if err != nil {
		a = &gomail.Address{Address: s}
	}
	if ascii, err := asciiAddress(a.Address); err == nil {
		a.Address = ascii
	}
	return a
}

func nonASCII(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r >= utf8.RuneSelf })
}

// asciiAddress is addr with its domain in ASCII (IDNA); a local part in
// another script has no ASCII form (it needs SMTPUTF8, which relay does
// not use): an error.
func asciiAddress(addr string) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr, nil
	}
	local, domain := addr[:at], addr[at+1:]
	if !nonASCII(local) && !nonASCII(domain) {
		// As it is: an address literal ([192.168.10.5]) or a host name
		// with '_' is no IDNA name (found by review: refused).
		return addr, nil
	}
	if nonASCII(local) {
		return "", fmt.Errorf("the part before @ is not ASCII (it would need SMTPUTF8)")
	}
	d, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("domain %s: %w", domain, err)
	}
	return local + "@" + d, nil
}

// envelope is MAIL FROM and the RCPT TO list: the bare addresses of from
// and to. The delivery and `relay check` both use it, so the check probes
// the transaction relay will run.
func (c *SMTPConfig) envelope() (from string, to []string) {
	to = make([]string, len(c.To))
	for i, a := range c.To {
		to[i] = address(a).Address
	}
	return address(c.From).Address, to
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// write writes the whole mail: a header with the message's routing fields,
// a short text part for people, and the file (or part) as a base64 attachment.
func (p *Publisher) write(w io.Writer, out outgoing, pt part, tid string, r io.Reader, attachName string) error {
	var h gomail.Header
	h.SetDate(p.now())
	h.SetAddressList("From", []*gomail.Address{address(p.cfg.From)})
	to := make([]*gomail.Address, len(p.cfg.To))
	for i, a := range p.cfg.To {
		to[i] = address(a)
	}
	h.SetAddressList("To", to)
	subject := p.cfg.SubjectPrefix + out.name
	if pt.n > 1 {
		subject += " (part " + pt.String() + ")"
	}
	h.SetSubject(subject)
	if err := h.GenerateMessageIDWithHostname(p.cfg.Helo); err != nil {
		return err
	}
	h.SetText(HeaderFrom, out.h.From)
	h.SetText(HeaderTo, out.h.To)
	if !out.h.ByName() {
		// Routed by its file name: no plan or numbers to tell.
		h.SetText(HeaderPlan, out.h.ExchangePlan)
		h.Set(HeaderMessageNo, strconv.FormatUint(out.h.MessageNo, 10))
		h.Set(HeaderReceivedNo, strconv.FormatUint(out.h.ReceivedNo, 10))
	}
	h.SetText(HeaderFile, out.name)
	h.Set(HeaderSize, strconv.FormatInt(out.size, 10))
	h.Set(HeaderSHA256, out.sha)
	if pt.n > 1 {
		h.Set(HeaderTransfer, tid)
		h.Set(HeaderPart, pt.String())
	}
	mw, err := gomail.CreateWriter(w, h)
	if err != nil {
		return err
	}
	var th gomail.InlineHeader
	th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	tw, err := mw.CreateSingleInline(th)
	if err != nil {
		return err
	}
	text := fmt.Sprintf("1C exchange message %s\r\nplan %s, from %s to %s, No %d, received No %d\r\n%d bytes, sha256 %s\r\n",
		out.name, out.h.ExchangePlan, out.h.From, out.h.To, out.h.MessageNo, out.h.ReceivedNo, out.size, out.sha)
	if pt.n > 1 {
		text += fmt.Sprintf("This mail is part %s; relay joins the parts.\r\n", pt)
	}
	if _, err := io.WriteString(tw, text); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	var ah gomail.AttachmentHeader
	ctype := contentType(out.name)
	if pt.n > 1 {
		ctype = "application/octet-stream"
	}
	// mime.FormatMediaType writes a non-ASCII name as RFC 2231
	// (filename*=utf-8''...), which go-message's SetFilename would not.
	ah.Set("Content-Type", mime.FormatMediaType(ctype, map[string]string{"name": attachName}))
	ah.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": attachName}))
	aw, err := mw.CreateAttachment(ah)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(aw, r, make([]byte, 64<<10)); err != nil {
		return err
	}
	if err := aw.Close(); err != nil {
		return err
	}
	return mw.Close()
}

// smtpSpoolPattern names the zips compress: zip spools.
const smtpSpoolPattern = "smtp-*.zip"

// zipModified is the entry time of every zip compress: zip makes (the DOS
// epoch, as reproducible builds use): the same message must pack into the
// same bytes on every attempt, or a retried split file gets another sha256
// and transfer id, its parts are all sent again, and the receiver is left
// with the first attempt's parts as a set that never completes.
var zipModified = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)

// zip packs an .xml message into a spooled Message_A_B.zip with one entry.
func (p *Publisher) zip(ctx context.Context, in outgoing) (outgoing, func(), error) {
	if err := os.MkdirAll(p.spool, 0o750); err != nil {
		return in, nil, err
	}
	f, err := os.CreateTemp(p.spool, smtpSpoolPattern)
	if err != nil {
		return in, nil, err
	}
	release := func() { f.Close(); os.Remove(f.Name()) }
	sum := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, sum)}
	zw := zip.NewWriter(cw)
	ew, err := zw.CreateHeader(&zip.FileHeader{Name: in.name, Method: zip.Deflate, Modified: zipModified})
	if err == nil {
		var n int64
		n, err = io.CopyBuffer(ew, in.body, make([]byte, 256<<10))
		if err == nil && n != in.size {
			err = fmt.Errorf("read %d bytes from the object store, want %d", n, in.size)
		}
	}
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		release()
		return in, nil, err
	}
	out := in
	out.name = in.name[:len(in.name)-4] + ".zip"
	out.size = cw.n
	out.sha = hex.EncodeToString(sum.Sum(nil))
	out.body = folder.CtxReader{Ctx: ctx, R: f}
	return out, release, nil
}

// dialSMTP opens a session: connect, TLS (implicit or STARTTLS), EHLO,
// AUTH; delivery and `relay check` share it. The session is cut when ctx
// ends; closeSession ends it.
func dialSMTP(ctx context.Context, cfg *SMTPConfig, t target, tc *tls.Config, log *slog.Logger) (c *smtp.Client, closeSession func(), err error) {
	pass, err := cfg.password()
	if err != nil {
		return nil, nil, err
	}
	if cfg.InsecureSkipVerify && t.tls() {
		log.Warn("TLS certificate checks are off (insecure_skip_verify)")
	}
	d := net.Dialer{Timeout: cfg.ConnectTimeout.Std()}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", t.addr, err)
	}
	// A cancelled delivery (shutdown) must not wait for a stalled server.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	var conn net.Conn = &writeTimeoutConn{Conn: raw, timeout: cfg.IOTimeout.Std()}
	raw.SetDeadline(time.Now().Add(cfg.ConnectTimeout.Std()))
	// go-smtp clears the deadline after every command and greets under its
	// own 5-minute timeout: bound the whole login by connect_timeout.
	loginTimer := time.AfterFunc(cfg.ConnectTimeout.Std(), func() { raw.Close() })
	switch {
	case t.implicitTLS:
		tconn := tls.Client(conn, tc)
		if err = tconn.HandshakeContext(ctx); err != nil {
			err = fmt.Errorf("tls handshake: %w", err)
			break
		}
		c = smtp.NewClient(tconn)
	case t.startTLS:
		c, err = smtp.NewClientStartTLS(conn, tc)
		if err != nil {
			err = fmt.Errorf("STARTTLS: %w", err)
		}
	default:
		c = smtp.NewClient(conn)
	}
	if err == nil {
		c.CommandTimeout = cfg.IOTimeout.Std()
		c.SubmissionTimeout = cfg.IOTimeout.Std()
		if err = c.Hello(cfg.Helo); err != nil {
			err = fmt.Errorf("EHLO: %w", err)
		}
	}
	if err == nil && t.user != "" {
		err = auth(c, t.user, pass)
	}
	raw.SetDeadline(time.Time{})
	if !loginTimer.Stop() && ctx.Err() == nil {
		if err == nil {
			c.Close()
		}
		err = fmt.Errorf("login not done within connect_timeout %s: %v", cfg.ConnectTimeout.Std(), err)
	}
	if err != nil {
		stop()
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
	return c, func() { stop(); c.Close() }, nil
}

// auth logs in with PLAIN, or LOGIN when that is all the server offers.
func auth(c *smtp.Client, user, pass string) error {
	var mech sasl.Client
	switch {
	case c.SupportsAuth(sasl.Plain):
		mech = sasl.NewPlainClient("", user, pass)
	case c.SupportsAuth(sasl.Login):
		mech = sasl.NewLoginClient(user, pass)
	default:
		if ok, _ := c.Extension("AUTH"); !ok {
			return fmt.Errorf("AUTH: the server offers no authentication (on a plain connection many offer it only after STARTTLS)")
		}
		return fmt.Errorf("AUTH: the server offers neither PLAIN nor LOGIN")
	}
	if err := c.Auth(mech); err != nil {
		return fmt.Errorf("AUTH as %s: %w", user, err)
	}
	return nil
}

// writeTimeoutConn gives up a write that the server does not take within
// timeout: go-smtp bounds each reply wait but not the DATA writes.
type writeTimeoutConn struct {
	net.Conn
	timeout time.Duration
}

func (c *writeTimeoutConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

// exactReader fails a body that ends before left bytes or goes past them,
// so a short object never becomes a complete-looking mail.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	e.left -= int64(n)
	switch {
	case e.left < 0:
		return n, errors.New("the object store holds more bytes than the size metadata")
	case err == io.EOF && e.left > 0:
		return n, fmt.Errorf("the object store ended %d bytes early: %w", e.left, io.ErrUnexpectedEOF)
	}
	return n, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
