package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// CheckSMTP proves a delivery endpoint usable the way relay will use it:
// connect, TLS, AUTH, then MAIL FROM and RCPT TO for every recipient are
// accepted, and RSET ends the transaction without sending anything.
func CheckSMTP(ctx context.Context, node string, cfg SMTPConfig, log *slog.Logger) error {
	t, err := cfg.target()
	if err != nil {
		return err
	}
	tc, err := cfg.tlsConfig(t.host)
	if err != nil {
		return err
	}
	c, closeSession, err := dialSMTP(ctx, &cfg, t, tc, log)
	if err != nil {
		return withHint(fmt.Errorf("smtp %s: %w", node, err))
	}
	defer closeSession()
	from, rcpts := cfg.envelope()
	if err := c.Mail(from, nil); err != nil {
		return withHint(fmt.Errorf("smtp %s: MAIL FROM %s: %w", node, from, err))
	}
	for _, to := range rcpts {
		if err := c.Rcpt(to, nil); err != nil {
			return withHint(fmt.Errorf("smtp %s: RCPT TO %s: %w", node, to, err))
		}
	}
	if err := c.Reset(); err != nil {
		return fmt.Errorf("smtp %s: RSET: %w", node, err)
	}
	_ = c.Quit()
	return nil
}

// CheckIMAP proves a pickup endpoint usable: connect, TLS, LOGIN, SELECT
// the mailbox. A server without IDLE works (relay polls), so that is a
// note in the result, not a failure.
func CheckIMAP(ctx context.Context, node string, cfg IMAPConfig, log *slog.Logger) (note string, err error) {
	t, err := cfg.target()
	if err != nil {
		return "", err
	}
	tc, err := cfg.tlsConfig(t.host)
	if err != nil {
		return "", err
	}
	c, _, err := dialIMAP(ctx, &cfg.Server, t, tc, log, nil)
	if err != nil {
		return "", withHint(fmt.Errorf("imap %s: %w", node, err))
	}
	defer c.Close()
	// After login the client's commands watch no context: --timeout and
	// Ctrl-C close the connection under them.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := c.Select(t.mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		switch {
		case errors.Is(context.Cause(ctx), context.DeadlineExceeded):
			err = fmt.Errorf("%w: %w", errCheckTimeout, context.Cause(ctx))
		case ctx.Err() != nil:
			err = context.Cause(ctx)
		}
		return "", withHint(fmt.Errorf("imap %s: select %s: %w", node, t.mailbox, err))
	}
	if !c.Caps().Has(imap.CapIdle) {
		note = fmt.Sprintf("no IDLE: new mail is seen every %s (poll_interval)", cfg.PollInterval.Std())
	}
	_ = c.Logout().Wait()
	return note, nil
}

// errCheckTimeout marks a check that its own --timeout stopped.
var errCheckTimeout = errors.New("no answer within --timeout")

// withHint adds advice for the administrator to a failed check.
func withHint(err error) error {
	if h := hint(err); h != "" {
		return fmt.Errorf("%w (hint: %s)", err, h)
	}
	return err
}

func hint(err error) string {
	msg := err.Error()
	var ne net.Error
	switch {
	case errors.Is(err, errCheckTimeout):
		// Before the steps' own cases: "select INBOX: ... deadline
		// exceeded" is no missing folder. Not any deadline: a dial's
		// timeout also says DeadlineExceeded, and has its own hint below.
		return "the server hangs or is slow"
	case errors.Is(err, context.Canceled):
		return ""
	case strings.Contains(msg, "(password_env) is not set"):
		return "export the password in the environment variable named by password_env"
	case strings.Contains(msg, "connection refused"):
		return "nothing listens there: wrong host or port, or the server is down"
	case strings.Contains(msg, "no such host"):
		return "the host name does not resolve"
	// The AUTH error itself mentions STARTTLS (many servers offer AUTH only
	// after it), so it must be told apart before the STARTTLS step's errors.
	case strings.Contains(msg, "offers no authentication"):
		return "the server offers no login on this connection: in clear text (starttls: off) many offer AUTH only after STARTTLS, so drop starttls: off or use smtps://; for a server that needs no login, leave the user out of the URL"
	// A certificate refused during STARTTLS is a certificate problem, not a
	// missing STARTTLS.
	case strings.Contains(msg, "tls handshake") || strings.Contains(msg, "certificate"):
		return "check the port (TLS vs STARTTLS), ca_file, and that the certificate names the host in the URL"
	case strings.Contains(msg, "STARTTLS:"):
		return "the server offers no STARTTLS here: use the TLS port with smtps:// or imaps://, or starttls: off for a server on this host"
	case strings.Contains(msg, "AUTH") || strings.Contains(msg, "LOGIN"):
		return "wrong user or password, or the server allows no login on this port"
	case strings.Contains(msg, "RCPT TO"):
		return "the server does not accept mail for this recipient from this account"
	case strings.Contains(msg, "MAIL FROM"):
		return "the server does not let this account send as from:"
	case strings.Contains(msg, "select"):
		return "the mailbox folder does not exist or is not readable"
	case errors.As(err, &ne) && ne.Timeout():
		return "no answer: a firewall drops the connection, or the host is wrong"
	}
	return ""
}
