package main

// Shared by the mail and mailbig scenarios: one postfix + dovecot set on
// 127.0.0.1 (from test/realserver), the routing of the two relays on it
// (relay A sends by SMTP, relay B reads the mailbox by IMAP), a watcher of
// the mailbox's Maildir, the relays' log lines, and the go-smtp / go-imap
// clients of the baselines.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gomail "github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/fsnotify/fsnotify"

	mailad "github.com/relay1c/relay/adapters/mail"
	"github.com/relay1c/relay/test/realserver"
)

// mailPasswordEnv is the variable the relay children read the mailbox
// password from (password_env); the bench sets it in its own environment,
// which the children inherit.
const mailPasswordEnv = "RELAY_BENCH_MAIL_PASSWORD"

// The mail scenarios' names: the sending node, and the mailbox users (each
// user@localhost, password realserver.MailPassword).
const (
	mailSender   = "ЦО"    // the node whose messages go by mail
	mailSMTPUser = "relay" // relay A's SMTP AUTH user, and the From of its mails
	mailHubUser  = "wh"    // the mailbox relay A sends to and relay B reads
	mailBaseUser = "base"  // the baselines' mailbox (and their AUTH user)
)

// mailBench is what both mail scenarios run on: a temp folder (a/ for
// relay A, b/ for relay B), the relay binary and one mail server set.
type mailBench struct {
	root, bin   string
	m           *realserver.Mail
	tc          *tls.Config // trusts m's self-signed cert
	closeServer func() error
}

// startMailBench makes a temp folder (pattern) under dir, finds the relay
// binary (relayBin, or built into the folder), starts postfix + dovecot with
// TLS and a message_size_limit of sizeLimit, registers them for the
// last-resort cleanup and sets mailPasswordEnv for the relay children. The
// caller undoes it with close; when startMailBench fails it has undone it
// already.
func startMailBench(ctx context.Context, dir, pattern, relayBin string, sizeLimit int64, logf func(string, ...any)) (b *mailBench, err error) {
	b = &mailBench{}
	if b.root, err = tempDir(dir, pattern); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			removeTemp(b.root)
		}
	}()
	if b.bin, err = relayBinary(ctx, relayBin, b.root, logf); err != nil {
		return nil, err
	}
	t := time.Now()
	b.m, err = realserver.StartMail(realserver.MailOptions{
		TLS: true, MessageSizeLimit: sizeLimit, Users: []string{mailSMTPUser, mailHubUser, mailBaseUser}, Logf: logf,
	})
	if err != nil {
		if errors.Is(err, realserver.ErrMailNotInstalled) {
			err = fmt.Errorf("%w: apt-get install -y postfix dovecot-imapd dovecot-lmtpd", err)
		}
		return nil, err
	}
	m := b.m
	unregister := registerStop(func() { _ = m.Close() })
	b.closeServer = func() error {
		defer unregister()
		return m.Close()
	}
	defer func() {
		if err != nil {
			b.closeServer()
		}
	}()
	logf("postfix on %s (message_size_limit %s), dovecot IMAPS on %s, in %s; started in %s",
		m.SMTPAddr(), humanBytes(m.MessageSizeLimit), m.IMAPSAddr(), m.Dir, time.Since(t).Round(time.Millisecond))
	if b.tc, err = m.TLSConfig(); err != nil {
		return nil, err
	}
	if err = os.Setenv(mailPasswordEnv, realserver.MailPassword); err != nil {
		return nil, err
	}
	return b, nil
}

// close stops the mail servers by their PIDs and removes both temp
// folders; a failure to stop becomes *err if there was none. With *err set,
// the servers' log tails are added to it.
func (b *mailBench) close(err *error) {
	if *err != nil {
		*err = fmt.Errorf("%w\nmail server log tail:\n%s", *err, b.m.LogTail())
	}
	if cerr := b.closeServer(); cerr != nil && *err == nil {
		*err = cerr
	}
	removeTemp(b.root)
}

// mailAvailable says why the mail scenarios cannot run here, or nil.
func mailAvailable() error {
	for _, p := range []string{"postfix", "postconf", "dovecot"} {
		if _, err := realserver.SbinPath(p); err != nil {
			return fmt.Errorf("%w: apt-get install -y postfix dovecot-imapd dovecot-lmtpd", realserver.ErrMailNotInstalled)
		}
	}
	for _, prog := range []string{"imap", "lmtp"} {
		if !fileExists(filepath.Join("/usr/lib/dovecot", prog)) && !fileExists(filepath.Join("/usr/libexec/dovecot", prog)) {
			return fmt.Errorf("%w: no dovecot %s program: apt-get install -y dovecot-imapd dovecot-lmtpd", realserver.ErrMailNotInstalled, prog)
		}
	}
	if os.Geteuid() != 0 {
		return realserver.ErrMailNotRoot
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// mailSMTPYAML is relay A's deliver value for a destination node: SMTP with
// STARTTLS and AUTH as mailSMTPUser, to the hub mailbox.
func mailSMTPYAML(m *realserver.Mail, maxSize int64) string {
	return fmt.Sprintf("{ smtp: { url: %q, password_env: %s, from: %q, to: [%q], ca_file: %q, max_message_size: %d } }",
		"smtp://"+mailSMTPUser+"@"+m.SMTPAddr(), mailPasswordEnv, m.Address(mailSMTPUser), m.Address(mailHubUser), m.CAFile, maxSize)
}

// mailRelayAYAML is relay A's routing: node from picks up from ./<from>/out,
// every node of to delivers by SMTP into the hub mailbox, in mode ("" =
// the default).
func mailRelayAYAML(id, listen string, m *realserver.Mail, from string, to []string, mode string, maxSize int64, settle, poll time.Duration) string {
	var b strings.Builder
	b.WriteString(relayYAML(id, listen))
	fmt.Fprintf(&b, "  %q:\n    pickup: { dir: { path: %q, settle: %s, poll_interval: %s, incomplete_timeout: 10m } }\n", from, "./"+from+"/out", settle, poll)
	for _, n := range to {
		fmt.Fprintf(&b, "  %q:\n%s    deliver: %s\n", n, modeYAML(mode), mailSMTPYAML(m, maxSize))
	}
	return b.String()
}

// mailIMAPPoll is relay B's imap poll_interval: with IDLE only a safety net,
// so a missed IDLE notification would show as a delay of this much.
const mailIMAPPoll = time.Minute

// mailRelayBYAML is relay B's routing: node from picks up from the hub
// mailbox over IMAPS (IDLE, mails from relay A only, after: delete), every
// node of to delivers into ./<to>/in, in mode.
func mailRelayBYAML(id, listen string, m *realserver.Mail, from string, to []string, mode string) string {
	var b strings.Builder
	b.WriteString(relayYAML(id, listen))
	fmt.Fprintf(&b, "  %q:\n    pickup: { imap: { url: %q, password_env: %s, ca_file: %q, allowed_senders: [%q], poll_interval: %s }, after: delete }\n",
		from, "imaps://"+mailHubUser+"@"+m.IMAPSAddr()+"/INBOX", mailPasswordEnv, m.CAFile, m.Address(mailSMTPUser), mailIMAPPoll)
	for _, n := range to {
		fmt.Fprintf(&b, "  %q:\n%s    deliver: { dir: %q }\n", n, modeYAML(mode), "./"+n+"/in")
	}
	return b.String()
}

// mailCount is the number of mails in user's Maildir (new and cur).
func mailCount(m *realserver.Mail, user string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		es, _ := os.ReadDir(filepath.Join(m.Maildir(user), sub))
		n += len(es)
	}
	return n
}

// awaitEmptyMailbox waits (untimed) up to d for user's mailbox to be empty.
func awaitEmptyMailbox(ctx context.Context, m *realserver.Mail, user string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		n := mailCount(m, user)
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's mailbox still holds %d mails %s after the last delivery", user, n, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// mailKey names one message in the mail scenarios: its destination node
// and MessageNo.
type mailKey struct {
	to string
	no uint64
}

// arrival is one mail seen in a Maildir: which message (and part, 0 when
// whole) it carries, and when it arrived.
type arrival struct {
	key     mailKey
	part, n int
	at      time.Time
}

// maildirWatch notes when each of relay A's mails arrives in a Maildir:
// dovecot's LMTP writes it into tmp/ and renames it into new/, which is
// when postfix has handed it over. It reads the mail's X-Relay-* header
// fields to know which message (and part) it is.
type maildirWatch struct {
	dir   string
	watch *fsnotify.Watcher

	mu       sync.Mutex
	arrivals []arrival
	unread   int // arrived, but gone before its header could be read
}

// startMaildirWatch watches dir/new until ctx ends; close stops it.
func startMaildirWatch(ctx context.Context, dir string) (*maildirWatch, error) {
	mw := &maildirWatch{dir: dir}
	var err error
	if mw.watch, err = newWatcher(filepath.Join(dir, "new")); err != nil {
		return nil, err
	}
	go eachEvent(ctx, mw.watch, 0, func(ev fsnotify.Event) {
		if ev.Has(fsnotify.Create) {
			mw.note(ev.Name, time.Now())
		}
	}, nil)
	return mw, nil
}

func (mw *maildirWatch) close() { mw.watch.Close() }

// note reads the header of the mail at path (or, when an IMAP session has
// moved it meanwhile, of the same mail in cur/) and records its arrival.
func (mw *maildirWatch) note(path string, at time.Time) {
	h, err := readMailHeader(path)
	if err != nil {
		// dovecot moves a mail from new/ to cur/ once a session has seen it,
		// renaming it to <name>:2,<flags>.
		if m, _ := filepath.Glob(filepath.Join(mw.dir, "cur", filepath.Base(path)+":*")); len(m) > 0 {
			h, err = readMailHeader(m[0])
		}
	}
	mw.mu.Lock()
	defer mw.mu.Unlock()
	if err != nil {
		mw.unread++
		return
	}
	a := arrival{at: at}
	a.key.to, _ = h.Text(mailad.HeaderTo)
	a.key.no, _ = strconv.ParseUint(strings.TrimSpace(h.Get(mailad.HeaderMessageNo)), 10, 64)
	if p := h.Get(mailad.HeaderPart); p != "" {
		i, n, _ := strings.Cut(p, "/")
		a.part, _ = strconv.Atoi(strings.TrimSpace(i))
		a.n, _ = strconv.Atoi(strings.TrimSpace(n))
	}
	mw.arrivals = append(mw.arrivals, a)
}

// seen returns a copy of the arrivals so far and the mails whose header
// could not be read.
func (mw *maildirWatch) seen() ([]arrival, int) {
	mw.mu.Lock()
	defer mw.mu.Unlock()
	return append([]arrival(nil), mw.arrivals...), mw.unread
}

// readMailHeader reads the header of the mail file at path.
func readMailHeader(path string) (gomail.Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return gomail.Header{}, err
	}
	defer f.Close()
	h, err := textproto.ReadHeader(bufio.NewReader(io.LimitReader(f, 256<<10)))
	if err != nil {
		return gomail.Header{}, err
	}
	var mh gomail.Header
	mh.Header.Header = h
	return mh, nil
}

// logEvent is one per-message line of a relay's log: "picked up" (the
// message is in its JetStream), "delivered" (the destination endpoint took
// it: for SMTP, the server answered 250 to the end of DATA) or "held" (a
// "gap: holding No n until No m arrives" of sequential mode).
type logEvent struct {
	msg     string
	channel string // plan:from->to
	no      uint64
	at      time.Time
}

// relayLogEvents reads the "picked up", "delivered" and "gap: holding" lines of a relay's
// text log (slog's key=value format, millisecond times). Lines it cannot
// read are skipped: the breakdown they feed is informative only.
func relayLogEvents(path string) []logEvent {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var evs []logEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kv := logfmt(sc.Text())
		msg := kv["msg"]
		if strings.HasPrefix(msg, "gap: holding") {
			msg = "held"
		}
		if msg != "picked up" && msg != "delivered" && msg != "held" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil {
			continue
		}
		no, err := strconv.ParseUint(kv["message_no"], 10, 64)
		if err != nil || kv["channel"] == "" {
			continue
		}
		evs = append(evs, logEvent{msg: msg, channel: kv["channel"], no: no, at: at})
	}
	return evs
}

// logfmt splits one slog text line into its keys and values (quoted
// values unquoted).
func logfmt(line string) map[string]string {
	kv := map[string]string{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			break
		}
		k, rest := s[:eq], s[eq+1:]
		var v string
		if strings.HasPrefix(rest, `"`) {
			end := 1
			for end < len(rest) && rest[end] != '"' {
				if rest[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(rest) {
				break
			}
			v, _ = strconv.Unquote(rest[:end+1])
			rest = rest[end+1:]
		} else {
			sp := strings.IndexByte(rest, ' ')
			if sp < 0 {
				sp = len(rest)
			}
			v, rest = rest[:sp], rest[sp:]
		}
		kv[k] = v
		s = rest
	}
	return kv
}

// eventTimes indexes the events named msg by channel and MessageNo (the
// first of each).
func eventTimes(evs []logEvent, msg string) map[string]map[uint64]time.Time {
	out := map[string]map[uint64]time.Time{}
	for _, e := range evs {
		if e.msg != msg {
			continue
		}
		if out[e.channel] == nil {
			out[e.channel] = map[uint64]time.Time{}
		}
		if _, ok := out[e.channel][e.no]; !ok {
			out[e.channel][e.no] = e.at
		}
	}
	return out
}

// logChannel is how a relay's log names a bench channel.
func logChannel(c *channel) string { return benchPlan + ":" + c.from + "->" + c.to }

// Baseline clients: a plain go-smtp session and a plain go-imap session,
// what a script moving the same files by mail without relay would use.

// baseSMTP opens one SMTP session to m: STARTTLS, then AUTH PLAIN as user.
func baseSMTP(m *realserver.Mail, tc *tls.Config, user string) (*smtp.Client, error) {
	c, err := smtp.DialStartTLS(m.SMTPAddr(), tc)
	if err != nil {
		return nil, fmt.Errorf("smtp dial: %w", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", user, realserver.MailPassword)); err != nil {
		c.Close()
		return nil, fmt.Errorf("smtp AUTH: %w", err)
	}
	return c, nil
}

// baseMail is one mail of a baseline: an exchange subject, a short text
// part and the file (or part) as a base64 attachment, with the X-Bench-*
// fields saying what it carries.
type baseMail struct {
	from, to   string // addresses
	attachName string
	fields     map[string]string
	body       io.Reader
}

// send runs one mail transaction on c: MAIL, RCPT, DATA.
func (bm baseMail) send(c *smtp.Client) error {
	if err := c.Mail(bm.from, nil); err != nil {
		return fmt.Errorf("MAIL FROM: %w", err)
	}
	if err := c.Rcpt(bm.to, nil); err != nil {
		return fmt.Errorf("RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := bm.write(w); err != nil {
		c.Close()
		return fmt.Errorf("write mail: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

func (bm baseMail) write(w io.Writer) error {
	var h gomail.Header
	h.SetDate(time.Now())
	h.SetAddressList("From", []*gomail.Address{{Address: bm.from}})
	h.SetAddressList("To", []*gomail.Address{{Address: bm.to}})
	h.SetSubject(mailad.DefaultSubjectPrefix + bm.attachName)
	for k, v := range bm.fields {
		h.Set(k, v)
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
	if _, err := io.WriteString(tw, "bench baseline mail\r\n"); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	var ah gomail.AttachmentHeader
	ah.SetContentType("application/octet-stream", nil)
	ah.SetFilename(bm.attachName)
	aw, err := mw.CreateAttachment(ah)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(aw, bm.body, make([]byte, 64<<10)); err != nil {
		return err
	}
	if err := aw.Close(); err != nil {
		return err
	}
	return mw.Close()
}

// baseIMAP is the baselines' IMAP session: IMAPS, LOGIN, SELECT INBOX;
// wake gets a value whenever the server reports a new message count.
type baseIMAP struct {
	c    *imapclient.Client
	wake chan struct{}
}

func dialBaseIMAP(m *realserver.Mail, tc *tls.Config, user string) (*baseIMAP, error) {
	b := &baseIMAP{wake: make(chan struct{}, 1)}
	c, err := imapclient.DialTLS(m.IMAPSAddr(), &imapclient.Options{
		TLSConfig: tc,
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					select {
					case b.wake <- struct{}{}:
					default:
					}
				}
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("imap dial: %w", err)
	}
	if err := c.Login(user, realserver.MailPassword).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("imap LOGIN: %w", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("imap SELECT: %w", err)
	}
	b.c = c
	return b, nil
}

func (b *baseIMAP) close() {
	_ = b.c.Logout().Wait()
	b.c.Close()
}

// drain fetches and deletes mails in rounds until done() or ctx ends: UID
// SEARCH ALL; if there are mails, one UID FETCH BODY[] for all of them,
// each mail's first attachment streamed to handle with the mail's header,
// then STORE +FLAGS.SILENT (\Deleted) and EXPUNGE; if there are none, IDLE
// until the server reports new mail (at most 1 s). It returns the rounds
// that found mail.
func (b *baseIMAP) drain(ctx context.Context, handle func(h gomail.Header, attachment io.Reader) error, done func() bool) (rounds int, err error) {
	c := b.c
	for !done() {
		if err := ctx.Err(); err != nil {
			return rounds, err
		}
		data, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
		if err != nil {
			return rounds, fmt.Errorf("imap SEARCH: %w", err)
		}
		uids := data.AllUIDs()
		if len(uids) == 0 {
			if err := b.idle(ctx); err != nil {
				return rounds, err
			}
			continue
		}
		rounds++
		set := imap.UIDSetNum(uids...)
		cmd := c.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{}}})
		var herr error
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			for item := msg.Next(); item != nil; item = msg.Next() {
				bs, ok := item.(imapclient.FetchItemDataBodySection)
				if !ok || bs.Literal == nil {
					continue
				}
				if err := handleMail(bs.Literal, handle); err != nil && herr == nil {
					herr = err
				}
				_, _ = io.Copy(io.Discard, bs.Literal)
			}
		}
		if err := cmd.Close(); err != nil {
			return rounds, fmt.Errorf("imap FETCH: %w", err)
		}
		if herr != nil {
			return rounds, herr
		}
		if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
			return rounds, fmt.Errorf("imap STORE: %w", err)
		}
		if err := c.Expunge().Close(); err != nil {
			return rounds, fmt.Errorf("imap EXPUNGE: %w", err)
		}
	}
	return rounds, nil
}

// idle waits in IDLE for new mail, at most 1 s.
func (b *baseIMAP) idle(ctx context.Context) error {
	cmd, err := b.c.Idle()
	if err != nil {
		return fmt.Errorf("imap IDLE: %w", err)
	}
	select {
	case <-b.wake:
	case <-time.After(time.Second):
	case <-ctx.Done():
	}
	if err := cmd.Close(); err != nil {
		return fmt.Errorf("imap end IDLE: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("imap IDLE: %w", err)
	}
	return nil
}

// handleMail parses one mail and streams its first attachment to handle.
func handleMail(r io.Reader, handle func(h gomail.Header, attachment io.Reader) error) error {
	mr, err := gomail.CreateReader(r)
	if err != nil {
		return fmt.Errorf("parse mail: %w", err)
	}
	defer mr.Close()
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return fmt.Errorf("mail %q has no attachment", mr.Header.Get("Subject"))
		}
		if err != nil {
			return fmt.Errorf("parse mail: %w", err)
		}
		if _, ok := p.Header.(*gomail.AttachmentHeader); ok {
			return handle(mr.Header, p.Body)
		}
	}
}
