package realserver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// missingMail fails the test when servers are required
// (RELAY_E2E_REQUIRE_SERVERS=1, as scripts/test.sh sets), else skips it.
func missingMail(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") == "1" {
		t.Fatalf("%s (RELAY_E2E_REQUIRE_SERVERS=1)", msg)
	}
	t.Skip(msg)
}

// startMailT starts a Mail for t, closed (and its log tail printed on
// failure) at cleanup.
func startMailT(t *testing.T, o MailOptions) *Mail {
	t.Helper()
	for _, p := range []string{"/usr/sbin/postfix", "/usr/sbin/dovecot"} {
		if _, err := os.Stat(p); err != nil {
			missingMail(t, "%s missing: install postfix, dovecot-imapd, dovecot-lmtpd (scripts/test.sh does)", p)
		}
	}
	if _, err := exec.LookPath("curl"); err != nil {
		missingMail(t, "curl missing (the independent SMTP client of this test)")
	}
	o.Logf = t.Logf
	start := time.Now()
	m, err := StartMail(o)
	switch {
	case errors.Is(err, ErrMailNotInstalled), errors.Is(err, ErrMailNotRoot):
		missingMail(t, "%v", err)
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("StartMail(TLS=%v) took %v: smtp %d, imap %d, imaps %d, lmtp %d, auth %d",
		o.TLS, time.Since(start).Round(time.Millisecond), m.SMTPPort, m.IMAPPort, m.IMAPSPort, m.LMTPPort, m.AuthPort)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mail servers log tail:\n%s", m.LogTail())
		}
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// writeMail writes an RFC 5322 message of about size bytes.
func writeMail(t *testing.T, to, subject string, size int) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "From: a@localhost\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%d.%s@relay.test>\r\n\r\n",
		to, subject, time.Now().UnixNano(), strings.ReplaceAll(subject, " ", "-"))
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	b.WriteString("end\r\n")
	f := filepath.Join(t.TempDir(), "mail.eml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// curlSend sends file to rcpt@localhost with curl, an SMTP client
// independent of relay's; extra holds TLS and AUTH options.
func curlSend(m *Mail, rcpt, file string, extra ...string) (string, error) {
	args := append([]string{"--noproxy", "*", "-sS", "--max-time", "20", "smtp://" + m.SMTPAddr(),
		"--mail-from", "a@localhost", "--mail-rcpt", m.Address(rcpt), "-T", file}, extra...)
	out, err := exec.Command("curl", args...).CombinedOutput()
	return string(out), err
}

func mustSend(t *testing.T, m *Mail, rcpt, file string, extra ...string) {
	t.Helper()
	if out, err := curlSend(m, rcpt, file, extra...); err != nil {
		t.Fatalf("curl smtp to %s %v: %v: %s", m.Address(rcpt), extra, err, out)
	}
}

// waitMaildir waits until user's Maildir holds n messages (new/ + cur/).
func waitMaildir(t *testing.T, m *Mail, user string, n int) {
	t.Helper()
	count := func() int {
		c := 0
		for _, sub := range []string{"new", "cur"} {
			es, _ := os.ReadDir(filepath.Join(m.Maildir(user), sub))
			c += len(es)
		}
		return c
	}
	deadline := time.Now().Add(10 * time.Second)
	for count() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Maildir of %s holds %d messages after 10s, want %d", user, count(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// imapLogin connects in mode "plain", "starttls" or "imaps" and logs in;
// the client is closed at cleanup.
func imapLogin(t *testing.T, m *Mail, mode, user string, o *imapclient.Options) *imapclient.Client {
	t.Helper()
	if o == nil {
		o = &imapclient.Options{}
	}
	tc, err := m.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	o.TLSConfig = tc
	o.Dialer = &net.Dialer{Timeout: 5 * time.Second}
	var c *imapclient.Client
	switch mode {
	case "plain":
		c, err = imapclient.DialInsecure(m.IMAPAddr(), o)
	case "starttls":
		c, err = imapclient.DialStartTLS(m.IMAPAddr(), o)
	case "imaps":
		c, err = imapclient.DialTLS(m.IMAPSAddr(), o)
	}
	if err != nil {
		t.Fatalf("imap dial (%s): %v", mode, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, MailPassword).Wait(); err != nil {
		t.Fatalf("imap login %s (%s): %v", user, mode, err)
	}
	return c
}

func uidSearchAll(t *testing.T, c *imapclient.Client) []imap.UID {
	t.Helper()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	d, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatalf("UID SEARCH ALL: %v", err)
	}
	return d.AllUIDs()
}

// processesOf lists the live processes of the given masters: the masters
// and their process groups.
func processesOf(pids []int) []ProcInfo {
	var ps []ProcInfo
	for _, p := range ProcTable() {
		for _, m := range pids {
			if (p.PID == m || p.PGID == m) && p.State != 'Z' && p.State != 'X' {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// stopAndCheck stops m and checks that none of its processes lives on.
func stopAndCheck(t *testing.T, m *Mail) {
	t.Helper()
	pids := m.PIDs()
	if len(pids) != 3 {
		t.Fatalf("PIDs() = %v, want postfix and two dovecot masters", pids)
	}
	before := processesOf(pids)
	start := time.Now()
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop took %v (%d processes)", time.Since(start).Round(time.Millisecond), len(before))
	if err := m.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	for _, p := range before {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
		if err != nil {
			continue // gone
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] != "Z" && f[0] != "X" {
			t.Errorf("process %d (pgid %d) still alive after Stop: %s", p.PID, p.PGID, b)
		}
	}
	if len(m.PIDs()) != 0 {
		t.Errorf("PIDs() after Stop = %v", m.PIDs())
	}
	if err := m.StartIMAP(); err == nil {
		t.Error("StartIMAP after Stop succeeded")
	}
	for _, addr := range []string{m.SMTPAddr(), m.IMAPAddr()} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Stop", addr)
		}
	}
}

// TestMail checks the harness: SMTP (plain, STARTTLS, AUTH PLAIN and LOGIN)
// into the Maildir, IMAP (STARTTLS, IMAPS, IDLE) out of it, the size limit,
// an IMAP outage, and that Stop leaves no process. Both servers run side by
// side, which also shows that postfix instances do not collide.
func TestMail(t *testing.T) {
	t.Run("TLS", func(t *testing.T) {
		t.Parallel()
		m := startMailT(t, MailOptions{TLS: true, MessageSizeLimit: 10 << 20})
		if m.CAFile == "" || m.IMAPSPort == 0 || m.IMAPSAddr() == "" {
			t.Fatalf("TLS server without CAFile or IMAPS port: %+v", m)
		}
		if m.Address("relay") != "relay@localhost" || m.Password("relay") != MailPassword || m.Password("nobody") != "" {
			t.Fatalf("Address/Password: %q %q", m.Address("relay"), m.Password("relay"))
		}
		msg := writeMail(t, "relay@localhost", "plain", 2000)

		// Plain SMTP, no AUTH (127.0.0.0/8 is in mynetworks).
		mustSend(t, m, "relay", msg)
		// STARTTLS + AUTH PLAIN with the full address, then AUTH LOGIN with
		// the bare user.
		mustSend(t, m, "relay", msg, "--ssl-reqd", "--cacert", m.CAFile,
			"--user", "relay@localhost:"+MailPassword, "--login-options", "AUTH=PLAIN")
		mustSend(t, m, "relay", msg, "--ssl-reqd", "--cacert", m.CAFile,
			"--user", "relay:"+MailPassword, "--login-options", "AUTH=LOGIN")
		// AUTH PLAIN on the plain connection; a wrong password is refused.
		mustSend(t, m, "relay", msg, "--user", "relay:"+MailPassword, "--login-options", "AUTH=PLAIN")
		if out, err := curlSend(m, "relay", msg, "--user", "relay:wrong"); err == nil {
			t.Fatalf("AUTH with a wrong password accepted: %s", out)
		}
		waitMaildir(t, m, "relay", 4)
		plog, _ := os.ReadFile(filepath.Join(m.Dir, "postfix", "postfix.log"))
		for _, want := range []string{"sasl_method=PLAIN, sasl_username=relay@localhost", "sasl_method=LOGIN, sasl_username=relay", "starttls=1"} {
			if !strings.Contains(string(plog), want) {
				t.Errorf("postfix.log lacks %q", want)
			}
		}

		// An unknown recipient is refused at RCPT TO.
		if out, err := curlSend(m, "nobody", msg); err == nil || !strings.Contains(out, "550") {
			t.Errorf("mail to nobody@localhost: %v: %s, want 550", err, out)
		}

		// 12 MB over a 10 MB limit: 552 at MAIL FROM (curl sends SIZE=).
		big := writeMail(t, "relay@localhost", "big", 12<<20)
		out, err := curlSend(m, "relay", big)
		if err == nil || !strings.Contains(out, "552") {
			t.Errorf("12 MB mail with a 10 MB limit: %v: %s, want 552", err, out)
		}

		// IMAPS with the CA, logging in with the full address.
		c := imapLogin(t, m, "imaps", "relay@localhost", nil)
		if !c.Caps().Has(imap.CapIdle) {
			t.Errorf("IMAPS capabilities lack IDLE: %v", c.Caps())
		}
		if uids := uidSearchAll(t, c); len(uids) != 4 {
			t.Fatalf("UID SEARCH ALL over IMAPS = %v, want 4 messages", uids)
		}

		// STARTTLS on the IMAP port; IDLE sees a delivery by the other
		// dovecot.
		exists := make(chan uint32, 16)
		c2 := imapLogin(t, m, "starttls", "relay", &imapclient.Options{
			UnilateralDataHandler: &imapclient.UnilateralDataHandler{
				Mailbox: func(d *imapclient.UnilateralDataMailbox) {
					if d.NumMessages != nil {
						select {
						case exists <- *d.NumMessages:
						default:
						}
					}
				},
			},
		})
		if n := len(uidSearchAll(t, c2)); n != 4 {
			t.Fatalf("UID SEARCH ALL after STARTTLS: %d messages, want 4", n)
		}
		idle, err := c2.Idle()
		if err != nil {
			t.Fatalf("IDLE: %v", err)
		}
		mustSend(t, m, "relay", writeMail(t, "relay@localhost", "during idle", 100))
		select {
		case n := <-exists:
			if n != 5 {
				t.Errorf("IDLE: EXISTS %d, want 5", n)
			}
		case <-time.After(10 * time.Second):
			t.Error("IDLE: no EXISTS within 10s of a delivery")
		}
		if err := idle.Close(); err != nil {
			t.Errorf("IDLE close: %v", err)
		}
		if err := idle.Wait(); err != nil {
			t.Errorf("IDLE: %v", err)
		}

		stopAndCheck(t, m)
	})

	t.Run("plain", func(t *testing.T) {
		t.Parallel()
		m := startMailT(t, MailOptions{})
		if m.CAFile != "" || m.IMAPSPort != 0 || m.MessageSizeLimit != DefaultMessageSizeLimit {
			t.Fatalf("plain server: CAFile %q, IMAPSPort %d, MessageSizeLimit %d", m.CAFile, m.IMAPSPort, m.MessageSizeLimit)
		}
		if len(m.Users) != 2 || m.Users[0] != "relay" || m.Users[1] != "wh" {
			t.Fatalf("default Users = %v", m.Users)
		}
		mustSend(t, m, "wh", writeMail(t, "wh@localhost", "one", 100), "--user", "wh:"+MailPassword)
		waitMaildir(t, m, "wh", 1)
		c := imapLogin(t, m, "plain", "wh", nil)
		if c.Caps().Has(imap.CapStartTLS) {
			t.Error("plain server offers STARTTLS")
		}
		if n := len(uidSearchAll(t, c)); n != 1 {
			t.Fatalf("UID SEARCH ALL: %d messages, want 1", n)
		}

		// IMAP outage: the session is closed, the port refuses, SMTP with
		// AUTH and delivery go on.
		port := m.IMAPPort
		if err := m.StopIMAP(); err != nil {
			t.Fatal(err)
		}
		if err := m.StopIMAP(); err != nil {
			t.Fatalf("second StopIMAP: %v", err)
		}
		if err := c.Noop().Wait(); err == nil {
			t.Error("IMAP session still answers after StopIMAP")
		}
		if conn, err := net.DialTimeout("tcp", m.IMAPAddr(), time.Second); err == nil {
			conn.Close()
			t.Fatal("IMAP port still accepts after StopIMAP")
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial IMAP after StopIMAP: %v, want connection refused", err)
		}
		if len(m.PIDs()) != 2 {
			t.Errorf("PIDs() during the IMAP outage = %v, want 2", m.PIDs())
		}
		mustSend(t, m, "wh", writeMail(t, "wh@localhost", "two", 100), "--user", "wh@localhost:"+MailPassword)
		waitMaildir(t, m, "wh", 2)

		if err := m.StartIMAP(); err != nil {
			t.Fatal(err)
		}
		if m.IMAPPort != port {
			t.Fatalf("IMAP restarted on port %d, want %d", m.IMAPPort, port)
		}
		c2 := imapLogin(t, m, "plain", "wh@localhost", nil)
		if n := len(uidSearchAll(t, c2)); n != 2 {
			t.Fatalf("UID SEARCH ALL after StartIMAP: %d messages, want 2", n)
		}

		stopAndCheck(t, m)
	})
}
