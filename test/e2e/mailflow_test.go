package e2e

// Mail endpoint tests against real postfix + dovecot (mail_test.go): relay A
// sends over SMTP, postfix delivers into a Maildir, relay B reads it over
// IMAP (IDLE) and delivers into a folder; a file bigger than a mail travels
// as parts; mail written by another client in 1C's own form is taken, a
// stranger's is left alone; SIGKILL of the real binary between fetch and
// commit loses nothing and delivers nothing twice.

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/test/realserver"
)

// mxPasswordEnv holds the mailbox password for the relays under test.
const mxPasswordEnv = "RELAY_E2E_MAIL_PASSWORD"

// mxSMTP is a deliver value sending to user@localhost through postfix.
func mxSMTP(m *realserver.Mail, to string, extra ...string) string {
	opts := []string{
		fmt.Sprintf("url: %q", fmt.Sprintf("smtp://relay@%s", m.SMTPAddr())),
		"password_env: " + mxPasswordEnv,
		"from: relay@localhost",
		fmt.Sprintf("to: [%q]", m.Address(to)),
		"io_timeout: 20s",
	}
	if m.CAFile != "" {
		opts = append(opts, fmt.Sprintf("ca_file: %q", m.CAFile))
	} else {
		opts = append(opts, "starttls: off")
	}
	return "{ smtp: { " + strings.Join(append(opts, extra...), ", ") + " } }"
}

// mxIMAP is a pickup value reading user's INBOX over IMAPS (or plain IMAP
// without TLS).
func mxIMAP(m *realserver.Mail, user string, extra ...string) string {
	u := fmt.Sprintf("imap://%s@%s/INBOX", user, m.IMAPAddr())
	opts := []string{"password_env: " + mxPasswordEnv, "poll_interval: 30s"}
	if m.CAFile != "" {
		u = fmt.Sprintf("imaps://%s@%s/INBOX", user, m.IMAPSAddr())
		opts = append(opts, fmt.Sprintf("ca_file: %q", m.CAFile))
	} else {
		opts = append(opts, "starttls: off")
	}
	opts = append([]string{fmt.Sprintf("url: %q", u)}, opts...)
	return "{ imap: { " + strings.Join(append(opts, extra...), ", ") + " }, after: delete }"
}

// embedded makes a site use its own embedded NATS even when the suite runs
// against an external one: two relays that each own their nodes must not
// share one stream.
func embedded(t testing.TB, s *site) {
	t.Helper()
	b, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := strings.Replace(string(b), fmt.Sprintf("url: %q", natsURL()), `url: ""`, 1)
	if err := os.WriteFile(s.cfg, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mailCount counts the mails in a user's Maildir (new and cur).
func mailCount(m *realserver.Mail, user string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		es, _ := os.ReadDir(filepath.Join(m.Maildir(user), sub))
		n += len(es)
	}
	return n
}

// TestMailFlow: relay A (dir pickup) → SMTP → postfix → Maildir → dovecot →
// relay B (IMAP pickup with IDLE) → dir delivery, every file identical.
func TestMailFlow(t *testing.T) {
	m := startMail(t, realserver.MailOptions{TLS: true})
	a := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "WH", deliverYAML: mxSMTP(m, "wh")})
	b := newSite(t,
		nodeSpec{code: "ЦО", pickupYAML: mxIMAP(m, "wh", `allowed_senders: ["relay@localhost"]`)},
		nodeSpec{code: "WH"})
	embedded(t, b)
	a.start(t)
	b.start(t)

	for n := uint64(1); n <= 4; n++ {
		h := header("ЦО", "WH", n, 0)
		format, data := exchange.FormatXML, fxXML(t, h, int64(2000+int(n)*150013))
		if n == 3 {
			format, data = exchange.FormatZip, fxZip(t, h, 400000)
		}
		name := exchange.FileName("ЦО", "WH", format)
		if err := os.WriteFile(filepath.Join(a.out("ЦО"), name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(b.in("WH"), name)
		// The poll interval is 30 s: within 20 s only IDLE can have seen it.
		if !fxAwait(20*time.Second, func() bool { return readNo(dst) == n }) {
			t.Fatalf("No %d (%s) not delivered to %s within 20s; A: %+v; B: %+v; mails in wh: %d\n%s",
				n, format, dst, fxNodes(t, a), fxNodes(t, b), mailCount(m, "wh"), m.LogTail())
		}
		if got, want := fxFileSum(dst), fxSum(data); got != want {
			t.Fatalf("No %d delivered with sha256 %s, sent %s", n, got, want)
		}
		if err := os.Remove(dst); err != nil {
			t.Fatal(err)
		}
	}
	if !fxAwait(10*time.Second, func() bool { return mailCount(m, "wh") == 0 }) {
		t.Errorf("wh's mailbox still holds %d mails after after: delete", mailCount(m, "wh"))
	}
	c := channel(t, b, "ЦО", "WH")
	if c.DeliveredNo != 4 || c.Dead+c.Duplicates != 0 {
		t.Errorf("channel ЦО→WH at B: %+v", c)
	}
	if d := fxDead(t, b); len(d) != 0 {
		t.Errorf("dead letters at B: %+v", d)
	}
}

// TestMailBigAsParts: a 30 MB message through a 10 MiB max_message_size
// arrives whole and identical, as parts joined by the receiving relay.
func TestMailBigAsParts(t *testing.T) {
	m := startMail(t, realserver.MailOptions{TLS: true})
	a := newSite(t, nodeSpec{code: "ЦО"}, nodeSpec{code: "WH", deliverYAML: mxSMTP(m, "wh", "max_message_size: 10MiB")})
	b := newSite(t, nodeSpec{code: "ЦО", pickupYAML: mxIMAP(m, "wh")}, nodeSpec{code: "WH"})
	embedded(t, b)
	a.start(t)
	// B starts only when all parts are in the mailbox, to count them there.
	data := fxXML(t, header("ЦО", "WH", 1, 0), 30<<20)
	name := exchange.FileName("ЦО", "WH", exchange.FormatXML)
	if err := os.WriteFile(filepath.Join(a.out("ЦО"), name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if !fxAwait(60*time.Second, func() bool { return deliveredNo(t, a, "ЦО", "WH") == 1 }) {
		t.Fatalf("A did not deliver the 30 MB message by mail: %+v\n%s", fxNodes(t, a), m.LogTail())
	}
	// postfix hands the parts to dovecot one by one: wait until all are in.
	parts := 0
	fxAwait(30*time.Second, func() bool {
		n := mailCount(m, "wh")
		if n >= 4 && n == parts {
			return true
		}
		parts = n
		time.Sleep(time.Second)
		return false
	})
	if parts < 4 {
		t.Errorf("wh's mailbox holds %d mails, want at least 4 parts of ≤ 10 MiB", parts)
	}
	b.start(t)
	dst := filepath.Join(b.in("WH"), name)
	if !fxAwait(60*time.Second, func() bool { return readNo(dst) == 1 }) {
		t.Fatalf("not joined and delivered within 60s: B %+v, dead %+v", fxNodes(t, b), fxDead(t, b))
	}
	if got, want := fxFileSum(dst), fxSum(data); got != want {
		t.Fatalf("delivered sha256 %s, sent %s", got, want)
	}
	if !fxAwait(10*time.Second, func() bool { return mailCount(m, "wh") == 0 }) {
		t.Errorf("parts left in the mailbox: %d", mailCount(m, "wh"))
	}
	t.Logf("30 MB went as %d mails", parts)
}

// oneCMail is a mail as 1C's own transport or a script writes it: the
// subject and attachment name given, the file base64-encoded.
func oneCMail(from, to, subject, attachName string, data []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nMIME-Version: 1.0\r\n", from, to, mime.BEncoding.Encode("utf-8", subject))
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
	fmt.Fprintf(&b, "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nОбмен данными\r\n")
	fmt.Fprintf(&b, "--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n")
	fmt.Fprintf(&b, "Content-Disposition: attachment; filename*=utf-8''%s\r\n\r\n", url.PathEscape(attachName))
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--b1--\r\n")
	return b.Bytes()
}

// curlSend submits a mail with curl, an independent SMTP client.
func curlSend(t testing.TB, m *realserver.Mail, from, to string, mail []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "mail.eml")
	if err := os.WriteFile(f, mail, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--noproxy", "*", "-sS", "--max-time", "30", "smtp://" + m.SMTPAddr(), "--mail-from", from, "--mail-rcpt", to, "-T", f}
	if m.CAFile != "" {
		args = append(args, "--ssl-reqd", "--cacert", m.CAFile)
	}
	if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
		t.Fatalf("curl smtp: %v\n%s", err, out)
	}
}

// TestMailFromOtherClients: a mail sent by curl the way 1C does (subject
// `Exchange message (Message_ЦО_ОП.zip)`, Cyrillic RFC 2231 attachment name)
// is taken; the same from a sender not allowed is left alone, and so is a
// mail that is not an exchange mail at all.
func TestMailFromOtherClients(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		missingServer(t, "curl not installed")
	}
	m := startMail(t, realserver.MailOptions{TLS: true})
	b := newSite(t,
		nodeSpec{code: "ЦО", pickupYAML: mxIMAP(m, "relay", `allowed_senders: ["base@localhost"]`)},
		nodeSpec{code: "ОП"})
	b.start(t)

	zipData := fxZip(t, header("ЦО", "ОП", 5, 2), 200000)
	name := exchange.FileName("ЦО", "ОП", exchange.FormatZip)
	curlSend(t, m, "stranger@localhost", m.Address("relay"), oneCMail("stranger@localhost", m.Address("relay"), "Exchange message ("+name+")", name, zipData))
	curlSend(t, m, "base@localhost", m.Address("relay"), []byte("From: base@localhost\r\nSubject: lunch\r\n\r\nnot an exchange\r\n"))
	curlSend(t, m, "base@localhost", m.Address("relay"), oneCMail("base@localhost", m.Address("relay"), "Exchange message ("+name+")", name, zipData))

	dst := filepath.Join(b.in("ОП"), name)
	if !fxAwait(20*time.Second, func() bool { return readNo(dst) == 5 }) {
		t.Fatalf("1C-style mail not delivered: %+v, dead %+v", fxNodes(t, b), fxDead(t, b))
	}
	if got, want := fxFileSum(dst), fxSum(zipData); got != want {
		t.Fatalf("delivered sha256 %s, sent %s", got, want)
	}
	// The stranger's mail and the lunch mail stay, unread.
	if !fxAwait(10*time.Second, func() bool { return mailCount(m, "relay") == 2 }) {
		t.Fatalf("relay's mailbox holds %d mails, want the 2 not taken", mailCount(m, "relay"))
	}
	time.Sleep(500 * time.Millisecond)
	if n := mailCount(m, "relay"); n != 2 {
		t.Fatalf("relay's mailbox holds %d mails, want 2", n)
	}
	es, _ := os.ReadDir(filepath.Join(m.Maildir("relay"), "cur"))
	for _, e := range es {
		if i := strings.Index(e.Name(), ":2,"); i >= 0 && strings.Contains(e.Name()[i:], "S") {
			t.Errorf("a mail not taken was marked seen: %s", e.Name())
		}
	}
	if d := fxDead(t, b); len(d) != 0 {
		t.Errorf("dead letters: %+v", d)
	}
}

// TestMailCrash SIGKILLs the real binary repeatedly while it fetches mails,
// stores them and expunges them, then checks that every message was
// delivered exactly once (the channel's state: delivered No 1, nothing
// stale, nothing dead; a mail taken again after a kill between JetStream's
// ack and the expunge counts as a dropped duplicate), byte-identical, and
// that the mailbox is empty.
func TestMailCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("SIGKILL crash test skipped under -short")
	}
	sideBySide(t)
	if _, err := exec.LookPath("curl"); err != nil {
		missingServer(t, "curl not installed")
	}
	const nodes = 12
	bin := buildRelay(t)
	m := startMail(t, realserver.MailOptions{TLS: true})
	specs := []nodeSpec{{code: "ЦО", pickupYAML: mxIMAP(m, "relay")}}
	for i := 1; i <= nodes; i++ {
		specs = append(specs, nodeSpec{code: fmt.Sprintf("X%d", i)})
	}
	s := newSite(t, specs...)
	sums := map[string]string{}
	for i := 1; i <= nodes; i++ {
		to := fmt.Sprintf("X%d", i)
		data := fxXML(t, header("ЦО", to, 1, 0), 2<<20)
		name := exchange.FileName("ЦО", to, exchange.FormatXML)
		sums[to] = fxSum(data)
		curlSend(t, m, "base@localhost", m.Address("relay"), oneCMail("base@localhost", m.Address("relay"), "EXCHANGE_MESSAGE:"+name, name, data))
	}
	if !fxAwait(30*time.Second, func() bool { return mailCount(m, "relay") == nodes }) {
		t.Fatalf("postfix delivered %d of %d mails", mailCount(m, "relay"), nodes)
	}

	// Each round starts the relay, waits until it has committed a mail
	// (the count drops), lets it go on a little — fetching, storing and
	// expunging the next ones — and kills it there.
	rp := newRelayProc(t, bin, s)
	kills, landed := 0, 0
	for round := 0; round < 5 && mailCount(m, "relay") > 1; round++ {
		before := mailCount(m, "relay")
		rp.start()
		taking := fxAwait(20*time.Second, func() bool { return mailCount(m, "relay") < before })
		time.Sleep(time.Duration(round*37%120) * time.Millisecond)
		rp.kill()
		kills++
		after := mailCount(m, "relay")
		if taking && after > 0 {
			landed++ // killed while it was taking mails, with more to take
		}
		t.Logf("round %d: mails %d → %d", round, before, after)
	}
	if landed == 0 {
		t.Errorf("none of the %d kills landed while mails were being taken: the test proved little", kills)
	}
	rp.start()
	if !fxAwait(60*time.Second, func() bool {
		if mailCount(m, "relay") > 0 {
			return false
		}
		// A relay killed after a rename but before recording it leaves the
		// file in place and its record pending: JetStream offers it again
		// after its ack wait (30 s), and only then is the state final.
		for i := 1; i <= nodes; i++ {
			to := fmt.Sprintf("X%d", i)
			if readNo(filepath.Join(s.in(to), exchange.FileName("ЦО", to, exchange.FormatXML))) != 1 || deliveredNo(t, s, "ЦО", to) != 1 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("not all delivered after %d kills: %d mails left; nodes %+v", kills, mailCount(m, "relay"), fxNodes(t, s))
	}
	dups := uint64(0)
	for i := 1; i <= nodes; i++ {
		to := fmt.Sprintf("X%d", i)
		if got := fxFileSum(filepath.Join(s.in(to), exchange.FileName("ЦО", to, exchange.FormatXML))); got != sums[to] {
			t.Errorf("ЦО→%s delivered with sha256 %s, sent %s", to, got, sums[to])
		}
		c := channel(t, s, "ЦО", to)
		if c.DeliveredNo != 1 || c.Stale+c.Superseded+c.Dead != 0 || c.Pending != 0 {
			t.Errorf("channel ЦО→%s: %+v", to, c)
		}
		dups += c.Duplicates
	}
	if d := fxDead(t, s); len(d) != 0 {
		t.Errorf("dead letters: %+v", d)
	}
	t.Logf("%d kills; %d mails taken again after a kill and dropped as duplicates", kills, dups)
}

// deliveredNo is a channel's last delivered No, 0 while it has none.
func deliveredNo(t testing.TB, s *site, from, to string) uint64 {
	for _, c := range statusOf(t, s) {
		if c.From == from && c.To == to {
			return c.DeliveredNo
		}
	}
	return 0
}

// fxNodesOK reports whether the site's API answers (the relay is up).
func fxNodesOK(s *site) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + s.listen + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestMailCheck: `relay check` against the real servers says OK for good
// endpoints and names the failing step, with a hint, for a wrong password,
// a missing folder and a recipient postfix does not know.
func TestMailCheck(t *testing.T) {
	bin := buildRelay(t)
	m := startMail(t, realserver.MailOptions{TLS: true})
	t.Setenv("RELAY_E2E_WRONG_PASSWORD", "wrong")
	bad := strings.Replace(mxIMAP(m, "relay"), "password_env: "+mxPasswordEnv, "password_env: RELAY_E2E_WRONG_PASSWORD", 1)
	s := newSite(t,
		nodeSpec{code: "GOOD", pickupYAML: mxIMAP(m, "relay"), deliverYAML: mxSMTP(m, "wh")},
		nodeSpec{code: "BADPW", pickupYAML: bad},
		nodeSpec{code: "NOBOX", pickupYAML: strings.Replace(mxIMAP(m, "relay"), "/INBOX", "/Nope", 1)},
		nodeSpec{code: "NORCPT", deliverYAML: mxSMTP(m, "nobody")})
	lines, output := relayCheck(t, bin, s)
	if f := strings.Fields(lines["GOOD"]); len(f) != 2 || f[1] != "OK" {
		t.Errorf("GOOD: %q, want OK", lines["GOOD"])
	}
	for code, want := range map[string][]string{
		"BADPW":  {"FAIL", "LOGIN as relay", "hint: wrong user or password"},
		"NOBOX":  {"FAIL", "select Nope", "hint: the mailbox folder does not exist"},
		"NORCPT": {"FAIL", "RCPT TO nobody@localhost", "550", "hint:"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[code], w) {
				t.Errorf("%s: %q, want %q in it", code, lines[code], w)
			}
		}
	}
	if n := mailCount(m, "wh"); n != 0 {
		t.Errorf("relay check sent %d mails", n)
	}
	if strings.Contains(output, realserver.MailPassword) {
		t.Errorf("relay check output shows the password")
	}
}

// TestMailRefused: postfix refuses the recipient (550): the message goes to
// dead letters with the server's words, and other nodes keep flowing. A
// file bigger than postfix's SIZE (1 MiB here) but within max_message_size
// goes as parts: the server's limit wins.
func TestMailRefused(t *testing.T) {
	m := startMail(t, realserver.MailOptions{TLS: true, MessageSizeLimit: 1 << 20})
	s := newSite(t,
		nodeSpec{code: "ЦО"},
		nodeSpec{code: "NOBODY", deliverYAML: mxSMTP(m, "nobody")},
		nodeSpec{code: "WH", deliverYAML: mxSMTP(m, "wh", "max_message_size: 4MiB")},
		nodeSpec{code: "ОП"})
	s.start(t)
	for _, to := range []string{"NOBODY", "WH"} {
		data := fxXML(t, header("ЦО", to, 1, 0), 2<<20)
		if err := os.WriteFile(filepath.Join(s.out("ЦО"), exchange.FileName("ЦО", to, exchange.FormatXML)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	good := fxXML(t, header("ЦО", "ОП", 1, 0), 1000)
	if err := os.WriteFile(filepath.Join(s.out("ЦО"), exchange.FileName("ЦО", "ОП", exchange.FormatXML)), good, 0o644); err != nil {
		t.Fatal(err)
	}
	if !fxAwait(30*time.Second, func() bool { return len(fxDead(t, s)) == 1 && deliveredNo(t, s, "ЦО", "WH") == 1 }) {
		t.Fatalf("dead letters: %+v; nodes %+v", fxDead(t, s), fxNodes(t, s))
	}
	if d := fxDead(t, s)[0]; d.Node != "NOBODY" || !strings.Contains(d.Reason, "smtp NOBODY: RCPT TO nobody@localhost: 550") {
		t.Errorf("dead letter %+v, want NOBODY's with the server's 550 reply", d)
	}
	if readNo(filepath.Join(s.in("ОП"), exchange.FileName("ЦО", "ОП", exchange.FormatXML))) != 1 {
		t.Errorf("ЦО→ОП not delivered")
	}
	if !fxAwait(10*time.Second, func() bool { return mailCount(m, "wh") >= 3 }) {
		t.Errorf("wh got %d mails, want the 2 MB file in parts of at most 1 MiB", mailCount(m, "wh"))
	}
}
