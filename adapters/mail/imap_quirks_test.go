package mail

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/test/loopback"
)

// flagsFirst is a server that, before answering a UID FETCH, reports a
// flag change of one of the requested mails that another client made
// (`* seq FETCH (UID uid FLAGS (...))`), as Cyrus does (it syncs at the
// start of a command) and any server may: unsolicited FETCH responses may
// come at any time, and a server answering a UID command names the UID.
// headers picks the header FETCH (classify), else the body FETCH.
type flagsFirst struct {
	imapserver.Session
	headers bool
	uid     imap.UID
	seq     uint32
	left    *atomic.Int32 // how many more times to do it
}

func (s flagsFirst) Fetch(w *imapserver.FetchWriter, set imap.NumSet, o *imap.FetchOptions) error {
	us, ok := set.(imap.UIDSet)
	if ok && us.Contains(s.uid) {
		isHeader, isBody := false, false
		for _, b := range o.BodySection {
			if b.Specifier == imap.PartSpecifierNone && len(b.Part) == 0 {
				isBody = true
			}
			if len(b.HeaderFields) > 0 {
				isHeader = true
			}
		}
		if ((s.headers && isHeader) || (!s.headers && isBody)) && s.left.Add(-1) >= 0 {
			m := w.CreateMessage(s.seq)
			m.WriteUID(s.uid)
			m.WriteFlags([]imap.Flag{imap.FlagFlagged})
			if err := m.Close(); err != nil {
				return err
			}
		}
	}
	return s.Session.Fetch(w, set, o)
}

// TestUnsolicitedFetchBeforeBody: a flag update of the very mail being
// fetched, carrying its UID and arriving before its body, is taken by
// imapclient as the FETCH's answer for that UID; the body that follows is
// discarded as unilateral data. The good mail became a dead letter ("mail
// has no attachment") and went to quarantine (found by review); it is
// fetched again now.
func TestUnsolicitedFetchBeforeBody(t *testing.T) {
	var left atomic.Int32
	left.Store(1)
	s := startMemIMAPWith(t, imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}}, func(s imapserver.Session) imapserver.Session {
		return flagsFirst{Session: s, headers: false, uid: 1, seq: 1, left: &left}
	})
	s.add(t, "INBOX", testMail(t, "Message_ЦО_ОП.xml", fixture(t, "Message_ЦО_ОП.xml"), part{1, 1}, 0))
	out, p := runPickup(t, "ЦО", imapTestConfig(s.addr), config.After{Action: config.AfterDelete}, nil)
	var m *message.Message
	select {
	case m = <-out:
	case <-time.After(5 * time.Second):
		e, _ := p.LastError()
		t.Fatalf("no message; pickup error %q", e)
	}
	pr := m.Metadata.Get(exchange.MetaProblem)
	m.Ack()
	if left.Load() == 1 {
		t.Fatal("the server never sent the flag update")
	}
	if pr != "" {
		time.Sleep(300 * time.Millisecond)
		q, _ := s.count(t, DefaultQuarantine)
		t.Fatalf("a good mail became a dead letter because a FLAGS update of it came before its body: problem %q; %d mail(s) moved to %s", pr, q, DefaultQuarantine)
	}
}

// TestUnsolicitedFetchBeforeHeader: the same in the header FETCH of a
// scan. A flag update of one mail of the batch (another client read or
// flagged it) that arrives before its headers is taken as that mail's
// answer: classify saw no header, judged it "not an exchange mail" and
// ignored it for the life of the process, silently (found by review). It
// is judged at the next scan now.
func TestUnsolicitedFetchBeforeHeader(t *testing.T) {
	var left atomic.Int32
	left.Store(1)
	s := startMemIMAPWith(t, imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}}, func(s imapserver.Session) imapserver.Session {
		return flagsFirst{Session: s, headers: true, uid: 2, seq: 2, left: &left}
	})
	s.add(t, "INBOX", testMail(t, "Message_ЦО_ОП.xml", genXML(t, "ЦО", "ОП", 1, 2000), part{1, 1}, 0))
	s.add(t, "INBOX", testMail(t, "Message_ЦО_ОП.xml", genXML(t, "ЦО", "ОП", 2, 2000), part{1, 1}, 0))
	c := imapTestConfig(s.addr)
	c.PollInterval = config.Duration(time.Second)
	out, p := runPickup(t, "ЦО", c, config.After{Action: config.AfterDelete}, nil)
	got := 0
	deadline := time.After(5 * time.Second)
	for got < 2 {
		select {
		case m := <-out:
			if pr := m.Metadata.Get(exchange.MetaProblem); pr != "" {
				t.Errorf("problem: %s", pr)
			}
			m.Ack()
			got++
		case <-deadline:
			n, _ := s.count(t, "INBOX")
			e, _ := p.LastError()
			t.Fatalf("only %d of 2 exchange mails taken in 5s (5 scans); %d still in INBOX: a FLAGS update of UID 2 before its headers made the pickup mark it ignored for good (pickup error %q)", got, n, e)
		}
	}
}

// TestDisagreeingPartJudgedAfterItsSet: a part mail whose X-Relay-Part
// count disagrees with the set already collected under its
// X-Relay-Transfer id is left alone, and judged on its own after the set
// is done. It was marked ignored for the life of the process instead: no
// dead letter, no quarantine (found by review; rule 2: bad input is never
// silently left).
func TestDisagreeingPartJudgedAfterItsSet(t *testing.T) {
	s := startMemIMAP(t, nil)
	content := genXML(t, "SHOP1", "ЦО", 7, 200<<10)
	per := int64(len(content)+1) / 2 // two parts
	good1 := testMail(t, "Message_SHOP1_ЦО.xml", content, part{1, 2}, per)
	s.add(t, "INBOX", good1)
	s.add(t, "INBOX", testMail(t, "Message_SHOP1_ЦО.xml", content, part{2, 2}, per))
	odd := bytes.Replace(good1, []byte(HeaderPart+": 1/2"), []byte(HeaderPart+": 1/3"), 1)
	if bytes.Equal(odd, good1) {
		t.Fatal("test setup: part header not found")
	}
	s.add(t, "INBOX", odd)
	c := imapTestConfig(s.addr)
	c.PollInterval = config.Duration(time.Second)
	var skew atomic.Int64
	out, _ := runPickupWith(t, "SHOP1", c, config.After{Action: config.AfterDelete}, nil, func(p *Pickup) {
		p.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	m := next(t, out)
	if pr := m.Metadata.Get(exchange.MetaProblem); pr != "" {
		t.Fatalf("the good set: problem %s", pr)
	}
	m.Ack()
	waitFor(t, "the set's parts deleted", func() bool { k, _ := s.count(t, "INBOX"); return k == 1 })
	skew.Store(int64(25 * time.Hour)) // past part_timeout
	select {
	case m := <-out:
		t.Logf("judged: %s %q", m.Metadata.Get(exchange.MetaFileName), m.Metadata.Get(exchange.MetaProblem))
		m.Ack()
	case <-time.After(4 * time.Second):
		k, _ := s.count(t, "INBOX")
		q, _ := s.count(t, DefaultQuarantine)
		t.Fatalf("the part mail that disagreed with its set was never judged after the set was done and part_timeout passed: no dead letter, %d mail(s) left in INBOX, %d in %s", k, q, DefaultQuarantine)
	}
}

// uidLastProxy forwards IMAP between the pickup and backend, rewriting
// every `* n FETCH (UID u ...)` response to name its UID last, after
// its literals (`* n FETCH (BODY[...] {k}\r\n... UID u)`): the order of
// the items of a FETCH response is the server's to choose (RFC 3501 §7.4.2
// sets none), and servers that put UID after the data exist.
type uidLastProxy struct {
	backend   string
	rewritten atomic.Int32
}

var fetchUIDFirst = regexp.MustCompile(`^(\* \d+ FETCH \()UID (\d+) ?`)
var literalEnd = regexp.MustCompile(`\{(\d+)\}\r\n$`)

func (p *uidLastProxy) serve(c net.Conn) {
	defer c.Close()
	b := upstream(c, p.backend)
	if b == nil {
		return
	}
	defer b.Close()
	r := bufio.NewReader(b)
	uid := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if uid == "" {
			if m := fetchUIDFirst.FindStringSubmatch(line); m != nil {
				uid = m[2]
				line = m[1] + line[len(m[0]):]
				p.rewritten.Add(1)
			}
		}
		if m := literalEnd.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
			if _, err := io.CopyN(c, r, int64(n)); err != nil {
				return
			}
			continue // the response goes on after the literal
		}
		if uid != "" {
			// The end of the FETCH response: ")\r\n".
			i := strings.LastIndex(line, ")")
			sep := " "
			if i > 0 && line[i-1] == '(' {
				sep = ""
			}
			line = line[:i] + sep + "UID " + uid + line[i:]
			uid = ""
		}
		if _, err := io.WriteString(c, line); err != nil {
			return
		}
	}
}

// TestUIDAfterDataShown: imapclient routes a FETCH response to the UID
// FETCH that asked for it only by a UID seen before the response's first
// literal ("Assume that the UID will be returned before any literal",
// imapclient/fetch.go handleFetch); a response naming its UID after the
// header literal is thrown away. The pickup sat on a mailbox full of
// exchange mail for ever with no error in its status (found by review);
// relay cannot read such a server, and says so.
func TestUIDAfterDataShown(t *testing.T) {
	s := startMemIMAP(t, nil)
	proxy := &uidLastProxy{backend: s.addr}
	addr := loopback.Serve(t, proxy.serve)
	s.add(t, "INBOX", testMail(t, "Message_ЦО_ОП.xml", fixture(t, "Message_ЦО_ОП.xml"), part{1, 1}, 0))
	c := imapTestConfig(addr)
	c.PollInterval = config.Duration(time.Second)
	out, p := runPickup(t, "ЦО", c, config.After{Action: config.AfterDelete}, nil)
	waitFor(t, "the pickup's error", func() bool { e, _ := p.LastError(); return strings.Contains(e, "answered none of 1 mails by UID") })
	select {
	case m := <-out:
		t.Fatalf("took %s from a server whose answers it cannot match", m.Metadata.Get(exchange.MetaFileName))
	default:
	}
	if proxy.rewritten.Load() == 0 {
		t.Fatal("test setup: no FETCH response rewritten")
	}
}

// eachPadded encodes b in chunks of n bytes, each chunk its own base64
// text with its own padding, one a line.
func eachPadded(b []byte, n int) string {
	var out strings.Builder
	for len(b) > 0 {
		k := min(n, len(b))
		out.WriteString(base64.StdEncoding.EncodeToString(b[:k]) + "\r\n")
		b = b[k:]
	}
	return out.String()
}

// TestIMAPUndecodableAttachmentSaysSo: an attachment whose base64 lines
// are each padded (each chunk encoded on its own) does not decode past the
// first; the file was refused as "file ends early", which blamed the
// sender's 1C file, the decoding error logged at Debug only (found by
// review). The reason names the transfer encoding now.
func TestIMAPUndecodableAttachmentSaysSo(t *testing.T) {
	content := fixture(t, "Message_ЦО_ОП.xml")
	s := startMemIMAP(t, nil)
	s.add(t, "INBOX", []byte("From: base@example.com\r\n"+
		"Subject: EXCHANGE_MESSAGE:Message_ЦО_ОП.xml\r\n"+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: multipart/mixed; boundary=XYZ\r\n\r\n"+
		"--XYZ\r\nContent-Type: text/plain\r\n\r\nexchange\r\n"+
		"--XYZ\r\nContent-Type: application/xml; name=\"Message_ЦО_ОП.xml\"\r\nContent-Disposition: attachment; filename=\"Message_ЦО_ОП.xml\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"+
		eachPadded(content, 50)+"\r\n--XYZ--\r\n"))
	out, _ := runPickup(t, "ЦО", imapTestConfig(s.addr), config.After{Action: config.AfterDelete}, nil)
	m := next(t, out)
	defer m.Ack()
	pr := m.Metadata.Get(exchange.MetaProblem)
	if !strings.Contains(pr, "attachment does not decode") || !strings.Contains(pr, "base64") {
		t.Fatalf("each-padded base64 of a whole %d-byte file: dead letter reason %q names no decoding error", len(content), pr)
	}
}
