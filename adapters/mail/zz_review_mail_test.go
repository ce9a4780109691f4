package mail

import (
	"bytes"
	"encoding/base64"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// TestZZAllowedSenderCyrillicDomain: a sending relay whose from: is in a
// Cyrillic domain writes the From header in its ASCII (IDNA) form; the
// receiving relay configured with the same address in allowed_senders
// (as its administrator naturally writes it) never takes the mail.
func TestZZAllowedSenderCyrillicDomain(t *testing.T) {
	for _, allowed := range []string{"obmen@склад.рф", "@склад.рф"} {
		t.Run(allowed, func(t *testing.T) {
			s := startMemIMAP(t, nil)
			raw := testMail(t, "Message_ЦО_ОП.xml", fixture(t, "Message_ЦО_ОП.xml"), part{1, 1}, 0)
			// What a relay with from: obmen@склад.рф writes (see address()).
			from := address("obmen@склад.рф").Address
			raw = regexp.MustCompile(`(?m)^From: .*\r\n`).ReplaceAll(raw, []byte("From: <"+from+">\r\n"))
			s.add(t, "INBOX", raw)
			c := imapTestConfig(s.addr)
			c.AllowedSenders = []string{allowed}
			if errs := c.Validate(); len(errs) > 0 {
				t.Fatalf("config refused: %v", errs)
			}
			out, _ := runPickup(t, "ЦО", c, config.After{Action: config.AfterDelete}, nil)
			select {
			case m := <-out:
				if p := m.Metadata.Get(exchange.MetaProblem); p != "" {
					t.Fatalf("problem: %s", p)
				}
				m.Ack()
			case <-time.After(3 * time.Second):
				t.Fatalf("mail from %s (obmen@склад.рф as the sending relay writes it) never taken with allowed_senders %q", from, allowed)
			}
		})
	}
}

// zzPickMail puts a mail with the given MIME parts (after a text part)
// in a fresh mailbox and returns the one message the pickup makes of it.
func zzPickMail(t *testing.T, parts ...string) *message.Message {
	t.Helper()
	s := startMemIMAP(t, nil)
	raw := "From: base@example.com\r\n" +
		"Subject: EXCHANGE_MESSAGE:Message_ЦО_ОП.xml\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=XYZ\r\n\r\n" +
		"--XYZ\r\nContent-Type: text/plain\r\n\r\nexchange\r\n"
	for _, p := range parts {
		raw += "--XYZ\r\n" + p + "\r\n"
	}
	raw += "--XYZ--\r\n"
	s.add(t, "INBOX", []byte(raw))
	out, _ := runPickup(t, "ЦО", imapTestConfig(s.addr), config.After{Action: config.AfterDelete}, nil)
	m := next(t, out)
	t.Cleanup(func() { m.Ack() })
	return m
}

// TestZZRFC2231NonUTF8Filename: a mail client set to windows-1251 (or
// koi8-r) writes the attachment's name as RFC 2231
// filename*=windows-1251''Message_%D6%CE_%CE%CF.xml. Go's
// mime.ParseMediaType drops RFC 2231 values in any charset but utf-8 and
// us-ascii, so the exchange attachment counts as unnamed; a picture (a
// signature logo) before it is then "the first attachment" and is taken
// instead: the good mail becomes a dead letter and goes to quarantine,
// though README promises "the first part named Message_*".
func TestZZRFC2231NonUTF8Filename(t *testing.T) {
	content := fixture(t, "Message_ЦО_ОП.xml")
	logo := "Content-Type: image/gif; name=logo.gif\r\nContent-Disposition: attachment; filename=logo.gif\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte("GIF89a\x01\x00\x01\x00")) + "\r\n"
	for cs, enc := range map[string]string{
		"windows-1251": "Message_%D6%CE_%CE%CF.xml",
		"koi8-r":       "Message_%E3%EF_%EF%F0.xml",
	} {
		t.Run(cs, func(t *testing.T) {
			m := zzPickMail(t, logo,
				"Content-Type: application/xml\r\nContent-Disposition: attachment; filename*="+cs+"''"+enc+"\r\nContent-Transfer-Encoding: base64\r\n\r\n"+base64Lines(content))
			if p := m.Metadata.Get(exchange.MetaProblem); p != "" {
				t.Fatalf("good exchange mail dead-lettered: %s", p)
			}
			if !bytes.Equal(exchangetest.Body(t, m), content) {
				t.Fatal("body differs from the exchange attachment")
			}
		})
	}
}

// TestZZRawUTF8UnquotedFilename: a text/xml attachment whose name is
// written as raw UTF-8 without quotes (filename=Message_ЦО_ОП.xml, as some
// mailers write 8-bit headers). mime.ParseMediaType refuses the
// parameter; go-message then returns the whole raw field as the
// disposition ("attachment; filename=...", not "attachment") and the
// whole Content-Type as the media type, so the part counts as unnamed
// text for people: "mail has no attachment", and the mail is quarantined.
func TestZZRawUTF8UnquotedFilename(t *testing.T) {
	content := fixture(t, "Message_ЦО_ОП.xml")
	m := zzPickMail(t, "Content-Type: text/xml; name=Message_ЦО_ОП.xml\r\nContent-Disposition: attachment; filename=Message_ЦО_ОП.xml\r\nContent-Transfer-Encoding: base64\r\n\r\n"+base64Lines(content))
	if p := m.Metadata.Get(exchange.MetaProblem); p != "" {
		t.Fatalf("good exchange mail dead-lettered: %s", p)
	}
	if !bytes.Equal(exchangetest.Body(t, m), content) {
		t.Fatal("body differs from the exchange attachment")
	}
}

// zzStallSearch never answers the first UID SEARCH of the server (a
// dovecot stuck on a lock, a proxy that lost the backend): the command
// was sent, no byte of the reply ever comes.
type zzStallSearch struct {
	imapserver.Session
	calls   *atomic.Int32
	release <-chan struct{}
}

func (s zzStallSearch) Search(kind imapserver.NumKind, c *imap.SearchCriteria, o *imap.SearchOptions) (*imap.SearchData, error) {
	if s.calls.Add(1) == 1 {
		<-s.release
	}
	return s.Session.Search(kind, c, o)
}

// TestZZReplyThatNeverStartsBoundedByIOTimeout: README says io_timeout is
// "the longest time a reply ... may go without a byte arriving" (only the
// wait in IDLE has no limit). go-imap waits for the first byte of any
// reply with no deadline (its read loop peeks with the deadline cleared,
// and progressConn keeps a cleared deadline cleared), so a server that
// takes a command and never answers holds the pickup for ever: no
// reconnect, no error in the status, no mail taken.
func TestZZReplyThatNeverStartsBoundedByIOTimeout(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := startMemIMAPWith(t, imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}}, func(se imapserver.Session) imapserver.Session {
		return zzStallSearch{Session: se, calls: &calls, release: release}
	})
	s.add(t, "INBOX", testMail(t, "Message_ЦО_ОП.xml", fixture(t, "Message_ЦО_ОП.xml"), part{1, 1}, 0))
	c := imapTestConfig(s.addr)
	c.IOTimeout = config.Duration(time.Second)
	out, p := runPickup(t, "ЦО", c, config.After{Action: config.AfterDelete}, nil)
	select {
	case m := <-out:
		m.Ack()
	case <-time.After(8 * time.Second):
		t.Fatalf("no reply to UID SEARCH for 8s with io_timeout 1s: the pickup still waits (searches %d, status error %v)", calls.Load(), zzLast(p))
	}
}

func zzLast(p *Pickup) string { e, _ := p.Last.LastError(); return e }
