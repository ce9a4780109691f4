package http

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	stdhttp "net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Request headers a delivery sends (and a pickup reads X-Relay-File and
// X-Relay-Sha256 of). Values that are not plain ASCII — Cyrillic node codes
// and plan names — are percent-encoded UTF-8 (RFC 3986, as url.PathEscape
// writes them: ЦО is %D0%A6%D0%9E); in 1C decode them with
// РаскодироватьСтроку(Значение, СпособКодированияСтроки.КодировкаURL).
const (
	HeaderPlan       = "X-Relay-Plan"
	HeaderFrom       = "X-Relay-From"
	HeaderTo         = "X-Relay-To"
	HeaderMessageNo  = "X-Relay-Message-No"
	HeaderReceivedNo = "X-Relay-Received-No"
	HeaderFile       = "X-Relay-File"
	HeaderSHA256     = "X-Relay-Sha256"
	// HeaderIdempotencyKey carries the message's id, the same on every
	// retry of one delivery.
	HeaderIdempotencyKey = "Idempotency-Key"
)

// maxRedirects is how many redirects one request follows.
const maxRedirects = 5

// client is what delivery, pickup and check of one endpoint share: the
// parsed options and one Go HTTP client with its connection pool.
type client struct {
	node string
	cfg  Config
	u    *url.URL
	hc   *stdhttp.Client
	log  *slog.Logger
}

// newClient validates cfg (role already set) and builds the HTTP client.
// It does no I/O but reading ca_file.
func newClient(node string, cfg Config, adapter string, log *slog.Logger) (*client, error) {
	cfg.setDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	u, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("http %s: %w", node, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", node, "adapter", adapter, "url", display(u))
	if cfg.InsecureSkipVerify {
		log.Warn("TLS certificate checks are off (insecure_skip_verify)")
	}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout.Std(), KeepAlive: 30 * time.Second}
	tr := &stdhttp.Transport{
		Proxy:                 stdhttp.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   cfg.ConnectTimeout.Std(),
		ResponseHeaderTimeout: cfg.ResponseTimeout.Std(),
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
	}
	hc := &stdhttp.Client{Transport: tr, CheckRedirect: checkRedirect}
	return &client{node: node, cfg: cfg, u: u, hc: hc, log: log}, nil
}

// errRedirect is a redirect relay does not follow.
var errRedirect = errors.New("redirect not followed")

// checkRedirect follows at most maxRedirects redirects, never from https
// to http, and none that would turn the request into a GET without its
// body (301/302/303 after POST or PUT): those come back as the 3xx answer.
// Credentials go only to the host and port of the endpoint's URL.
func checkRedirect(req *stdhttp.Request, via []*stdhttp.Request) error {
	if len(via) > maxRedirects {
		return fmt.Errorf("%w: stopped after %d redirects (a redirect loop?)", errRedirect, maxRedirects)
	}
	if req.Method != via[0].Method {
		return stdhttp.ErrUseLastResponse
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("%w: refused to follow a redirect from https to %s", errRedirect, req.URL.Redacted())
	}
	if req.URL.Host != via[0].URL.Host {
		// Go keeps Authorization for the same host name on another port:
		// another service there (the same machine's other site) gets no
		// credentials of this endpoint.
		req.Header.Del("Authorization")
	}
	return nil
}

// authorize adds the credentials and the static headers to req.
func (c *client) authorize(req *stdhttp.Request) error {
	req.Header.Set("User-Agent", "relay") // unless headers: names another
	for k, v := range c.cfg.Headers {
		req.Header.Set(k, v)
	}
	switch {
	case c.cfg.TokenEnv != "":
		tok, err := secret(c.cfg.TokenEnv, "token_env")
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	case c.cfg.User != "":
		pass, err := secret(c.cfg.PasswordEnv, "password_env")
		if err != nil {
			return err
		}
		req.SetBasicAuth(c.cfg.User, pass)
	}
	return nil
}

// authorizeAfterRedirect is authorize for a request sent where an earlier
// one was redirected to (a WebDAV MOVE after its PUT): the credentials go
// only to the endpoint's host and port, as checkRedirect keeps them.
func (c *client) authorizeAfterRedirect(req *stdhttp.Request) error {
	// The host and port of url, and never from https down to http (found
	// by review: relay check sent the password in clear text to an
	// http:// health_url).
	if req.URL.Host == c.u.Host && (c.u.Scheme != "https" || req.URL.Scheme == "https") {
		return c.authorize(req)
	}
	bare := *c
	bare.cfg.TokenEnv, bare.cfg.User = "", ""
	return bare.authorize(req)
}

// StatusError is an HTTP answer that is not the success the request
// wanted: its status line and the first bytes of the reply, on one line.
type StatusError struct {
	Code   int
	Status string // "503 Service Unavailable"
	Body   string // first 200 bytes of the reply, one line
	// Location is where a redirect that was not followed points.
	Location string
}

func (e *StatusError) Error() string {
	s := e.Status
	if e.Location != "" {
		s += " to " + e.Location
	}
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// statusError reads the start of a non-success reply.
func statusError(resp *stdhttp.Response, body io.Reader) *StatusError {
	e := &StatusError{Code: resp.StatusCode, Status: resp.Status, Body: snippet(body, 200)}
	if e.Status == "" {
		e.Status = strconv.Itoa(resp.StatusCode) + " " + stdhttp.StatusText(resp.StatusCode)
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		e.Location = resp.Header.Get("Location")
	}
	return e
}

// snippet is up to n bytes of r as one line of valid UTF-8.
func snippet(r io.Reader, n int64) string {
	b, _ := io.ReadAll(io.LimitReader(r, n))
	return strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "?")), " ")
}

// drain reads a little of a reply so that its connection can be reused.
func drain(r io.Reader) { _, _ = io.CopyN(io.Discard, r, 64<<10) }

// certError reports whether err is a failed certificate check: no retry
// fixes it, only ca_file or the server's certificate.
func certError(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
	)
	return errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

// requestErr is the error of a request that got no answer: the cause of
// its context when that ended it (timeout, no progress), else err without
// Go's `Method "URL":` prefix, which the caller's message already has.
func requestErr(rctx context.Context, err error) error {
	if rctx.Err() != nil {
		if cause := context.Cause(rctx); cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
			return cause
		}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// newAttemptContext bounds one request: at most timeout in all, and at
// most idle without progress (the guard's kicks).
func (c *client) newAttemptContext(ctx context.Context) (context.Context, *idleGuard, func()) {
	rctx, cancel := context.WithCancelCause(ctx)
	tctx, cancelT := context.WithTimeoutCause(rctx, c.cfg.Timeout.Std(),
		fmt.Errorf("the request took longer than timeout %s", c.cfg.Timeout.Std()))
	idle := c.cfg.ResponseTimeout.Std()
	g := &idleGuard{d: idle, fire: func() {
		cancel(fmt.Errorf("no progress for %s (response_timeout)", idle))
	}}
	return tctx, g, func() {
		g.stop()
		cancelT()
		cancel(nil)
	}
}

// idleGuard ends a request that stalls: each kick gives it another d;
// pause stops the clock (while the server thinks, ResponseHeaderTimeout
// is the bound). The zero guard is not armed until the first kick.
type idleGuard struct {
	d    time.Duration
	fire func()

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func (g *idleGuard) kick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	if g.t == nil {
		g.t = time.AfterFunc(g.d, g.fire)
		return
	}
	g.t.Reset(g.d)
}

func (g *idleGuard) pause() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.t != nil {
		g.t.Stop()
	}
}

func (g *idleGuard) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	if g.t != nil {
		g.t.Stop()
	}
}

// guardedReader kicks its guard on every read: a reply body that keeps
// coming is never cut by response_timeout, one that stalls is.
type guardedReader struct {
	r io.Reader
	g *idleGuard
}

func (r guardedReader) Read(b []byte) (int, error) {
	r.g.kick()
	return r.r.Read(b)
}

// display writes u for logs, errors and metadata with its path decoded
// (Message_ЦО_ОП.xml, not Message_%D0%A6...), like the ftp adapter's.
func display(u *url.URL) string {
	s := u.Scheme + "://" + u.Host + u.Path
	if u.RawQuery != "" {
		s += "?" + u.RawQuery
	}
	return s
}
