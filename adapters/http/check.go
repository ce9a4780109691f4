package http

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	stdhttp "net/http"
	"strings"
)

// Check proves an endpoint reachable the way relay will use it, sending no
// message and taking none: a GET of health_url (2xx) or, without one, an
// OPTIONS request on the URL, where any answer below 500 proves the
// service is there, except 401/403 (the credentials are refused) and a
// redirect relay does not follow (a delivery would not either). A pickup's
// URL is not asked with GET: a service that exports a new message on every
// GET would hand the check a message, and it would be lost. The error
// names the step and ends with a hint for the administrator.
func Check(ctx context.Context, node, role string, cfg Config, log *slog.Logger) error {
	cfg.role = role
	c, err := newClient(node, cfg, "http", log)
	if err != nil {
		return err
	}
	defer c.hc.CloseIdleConnections()
	method, target := stdhttp.MethodOptions, c.u
	if c.cfg.HealthURL != "" {
		method = stdhttp.MethodGet
		target, _ = parseURL(c.cfg.HealthURL)
	}
	var allow string
	err = c.probe(ctx, method, target.String(), func(code int, h stdhttp.Header) bool {
		allow = strings.Join(h.Values("Allow"), ", ")
		if c.cfg.HealthURL != "" {
			return code >= 200 && code < 300
		}
		// A 3xx that comes back is a redirect the delivery would not
		// follow either (one that turns POST into GET): every message
		// would fail on it.
		redirect := code >= 300 && code < 400
		return code < 500 && !redirect && code != stdhttp.StatusUnauthorized && code != stdhttp.StatusForbidden && code != stdhttp.StatusProxyAuthRequired
	})
	if err == nil && method == stdhttp.MethodOptions && c.cfg.Method == stdhttp.MethodPut && !c.cfg.PutDirect && allow != "" && !listsMove(allow) {
		// A server that says which methods it takes and leaves MOVE out
		// would take every file under its temporary name only.
		return fmt.Errorf("http %s: OPTIONS %s: Allow: %s has no MOVE, which renames a file PUT under a temporary name to its own (hint: a WebDAV folder takes MOVE; for a server that shows a PUT's file only once it is whole, set put_direct: true)",
			node, display(target), allow)
	}
	if err != nil {
		err = fmt.Errorf("http %s: %s %s: %w", node, method, display(target), err)
		if h := Hint(err); h != "" {
			return fmt.Errorf("%w (hint: %s)", err, h)
		}
	}
	return err
}

// listsMove says an Allow header's list of methods has MOVE.
func listsMove(allow string) bool {
	for m := range strings.SplitSeq(allow, ",") {
		if strings.EqualFold(strings.TrimSpace(m), "MOVE") {
			return true
		}
	}
	return false
}

// probe sends one bodiless request and judges its answer with ok.
func (c *client) probe(ctx context.Context, method, target string, ok func(code int, h stdhttp.Header) bool) error {
	rctx, guard, done := c.newAttemptContext(ctx)
	defer done()
	req, err := stdhttp.NewRequestWithContext(rctx, method, target, nil)
	if err != nil {
		return err
	}
	if err := c.authorizeAfterRedirect(req); err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return requestErr(rctx, err)
	}
	defer resp.Body.Close()
	if ok(resp.StatusCode, resp.Header) {
		return nil
	}
	return statusError(resp, guardedReader{r: resp.Body, g: guard})
}

// Hint turns a failed request into advice for the administrator, "" if
// none fits.
func Hint(err error) string {
	msg := err.Error()
	var se *StatusError
	var ne net.Error
	code := 0
	if errors.As(err, &se) {
		code = se.Code
	}
	switch {
	case strings.Contains(msg, "(password_env) is not set"):
		return "export the password in the environment variable named by password_env"
	case strings.Contains(msg, "(token_env) is not set"):
		return "export the token in the environment variable named by token_env"
	case code == stdhttp.StatusUnauthorized:
		return "wrong user or password (or token), or the service wants another kind of authentication"
	case code == stdhttp.StatusForbidden:
		return "the credentials are refused or this user may not use the service (in 1C: the user's rights to the HTTP service)"
	case code == stdhttp.StatusProxyAuthRequired:
		return "the proxy (HTTPS_PROXY) wants credentials"
	case code == stdhttp.StatusNotFound:
		return "nothing at this URL: check the path (1C: /<base>/hs/<root URL>/<template>) and that the service is published"
	case code == stdhttp.StatusMethodNotAllowed:
		return "the service does not take this method: a WebDAV folder needs method: PUT, a 1C HTTP service the method of its URL template"
	case code == stdhttp.StatusRequestEntityTooLarge:
		return "the service refuses bodies this large: raise its limit (nginx client_max_body_size)"
	case code >= 300 && code < 400, errors.Is(err, errRedirect):
		return "the URL redirects: set url to the final address"
	case code >= 500:
		return "the service is failing or down: see its log"
	case certError(err):
		return "the certificate is not trusted: check ca_file and that the certificate names the host in the URL"
	case strings.Contains(msg, "connection refused"):
		return "nothing listens there: wrong host or port, or the service is down"
	case strings.Contains(msg, "no such host"):
		return "the host name does not resolve"
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return "the server speaks plain HTTP on this port: use http://"
	case strings.Contains(msg, "tls:") || strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "TLS failed: check https:// vs http:// and the port"
	case errors.As(err, &ne) && ne.Timeout(), strings.Contains(msg, "timeout"), strings.Contains(msg, "no progress"):
		return "no answer in time: a firewall drops the connection, the host is wrong, or the service hangs"
	}
	return ""
}
