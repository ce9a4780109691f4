package e2e

// A real mail server started by a test on 127.0.0.1: Debian's postfix
// (SMTP, STARTTLS, AUTH PLAIN/LOGIN) delivering over LMTP into Maildirs that
// dovecot serves over IMAP (STARTTLS) and IMAPS, for the mail endpoint
// tests; one set of servers per test, stopped by PID in t.Cleanup.
//
// This file is the testing.TB face of test/realserver (StartMail), which
// starts, stops and configures the servers, makes their user, cert and
// ports, and whose header in mail.go lists the dovecot and postfix facts all
// this relies on. Mailboxes are user@localhost with the password
// realserver.MailPassword; m.Maildir(user) is where delivered mail lands.

import (
	"errors"
	"testing"

	"github.com/relay1c/relay/test/realserver"
)

// startMail starts postfix and dovecot on 127.0.0.1 with their own configs,
// Maildirs and ports, waits until every port listens, and registers
// t.Cleanup(Close), printing the servers' log tail first if the test failed.
// Missing servers skip the test, or fail it under RELAY_E2E_REQUIRE_SERVERS=1.
func startMail(t testing.TB, o realserver.MailOptions) *realserver.Mail {
	t.Helper()
	for _, bin := range []string{"postfix", "dovecot"} {
		if _, err := sbinPath(bin); err != nil {
			missingServer(t, "%s not installed (postfix, dovecot-imapd, dovecot-lmtpd); scripts/test.sh installs them", bin)
		}
	}
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	m, err := realserver.StartMail(o)
	switch {
	case errors.Is(err, realserver.ErrMailNotInstalled):
		missingServer(t, "%v; scripts/test.sh installs them", err)
	case errors.Is(err, realserver.ErrMailNotRoot):
		missingServer(t, "mail tests need root: %v", err)
	case err != nil:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mail servers (smtp %s, imap %s, imaps %q), log tail:\n%s", m.SMTPAddr(), m.IMAPAddr(), m.IMAPSAddr(), m.LogTail())
		}
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}
