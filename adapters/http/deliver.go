package http

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	stdhttp "net/http"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"

	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/exchange"
)

// Publisher is an HTTP delivery, a Watermill Publisher: Publish returns nil
// only once the service answered 2xx to the whole file.
//
// Outcomes: 2xx is delivered, unless the reply is 1C's remote-query error
// convention {"error": true, "errorDescription": "..."}, which dead-letters
// the message with that description. 408, 425, 429, 5xx and network errors
// are retried within Publish with capped exponential backoff (1s doubling,
// at most 5 attempts and 3 minutes, Retry-After honoured up to 5 minutes),
// then returned as a plain error: the pipeline retries later. 401 and 407
// (credentials), certificate failures and redirects relay does not follow
// are the endpoint's trouble: returned at once, retried by the pipeline.
// Every other 4xx is the service's verdict on this message: a permanent
// error (dead letter) with the status and the start of the reply.
type Publisher struct {
	c     *client
	retry retryPolicy
	// noReads says once that the WebDAV account may not read its folder.
	noReads sync.Once

	trouble.Last
}

var _ message.Publisher = (*Publisher)(nil)

// retryPolicy bounds the retries within one Publish.
type retryPolicy struct {
	initial, maxInterval time.Duration
	tries                uint
	elapsed              time.Duration
	// maxRetryAfter caps a server's Retry-After.
	maxRetryAfter time.Duration
}

var defaultRetry = retryPolicy{
	initial:       time.Second,
	maxInterval:   time.Minute,
	tries:         5,
	elapsed:       3 * time.Minute,
	maxRetryAfter: 5 * time.Minute,
}

// NewPublisher makes the delivery of node to an HTTP service. It does not
// connect: the first delivery does, so a service that is down at start
// only delays that node.
func NewPublisher(node string, cfg Config, log *slog.Logger) (*Publisher, error) {
	if cfg.role == "" {
		cfg.role = "deliver"
	}
	c, err := newClient(node, cfg, "http", log)
	if err != nil {
		return nil, err
	}
	return &Publisher{c: c, retry: defaultRetry}, nil
}

// Publish delivers each message; the topic is ignored (one destination).
// The message's context bounds the delivery: cancelling it stops a
// request and the waits between retries at once.
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

// Close drops idle connections; it is idempotent.
func (p *Publisher) Close() error {
	p.c.hc.CloseIdleConnections()
	return nil
}

// outcome is one attempt's failure and what to do about it.
type outcome struct {
	err       error
	retry     bool // worth another attempt within this Publish
	permanent bool // the service's verdict on this message: dead letter
	after     time.Duration
}

// retryAfterErr carries an attempt's error together with the server's
// Retry-After for backoff.Retry.
type retryAfterErr struct {
	err   error
	after *backoff.RetryAfterError
}

func (e *retryAfterErr) Error() string   { return e.err.Error() }
func (e *retryAfterErr) Unwrap() []error { return []error{e.err, e.after} }

func (p *Publisher) deliver(ctx context.Context, m *message.Message) error {
	d, err := exchange.OpenDelivery(ctx, m, "http "+p.c.node)
	if err != nil {
		return err
	}
	// The first attempt streams the body OpenDelivery opened; a retry or a
	// 307/308 redirect opens it again.
	first := d.Body
	defer func() {
		if first != nil {
			first.Close()
		}
	}()
	open := func(ctx context.Context) (io.ReadCloser, error) {
		if first != nil {
			b := first
			first = nil
			return b, nil
		}
		return exchange.Body(ctx, m)
	}

	target := p.c.u
	put := target // where the body goes
	if p.c.cfg.Method == "PUT" {
		target = target.JoinPath(url.PathEscape(d.Name))
		put = target
		if !p.c.cfg.PutDirect {
			put = p.c.u.JoinPath(url.PathEscape(d.Name + tempSuffix))
		}
	}
	where := fmt.Sprintf("http %s: %s %s", p.c.node, p.c.cfg.Method, display(target))
	log := p.c.log.With("file", d.Name, "message_id", m.UUID, "message_no", d.Header.MessageNo)

	attempts := 0
	var last error
	// checked compares the WebDAV folder's file with the message (as the
	// dir and ftp deliveries do): a newer one there is not replaced.
	// stop is the outcome that ends the delivery (stale, in place), o a
	// failed look, retried.
	checked := func(at *url.URL) (o *outcome, stop error) {
		if p.c.cfg.Method != "PUT" {
			return nil, nil
		}
		err := p.checkNotNewer(ctx, at, d, log)
		if errors.Is(err, exchange.ErrStale) || errors.Is(err, exchange.ErrInPlace) || errors.Is(err, exchange.ErrUnread) {
			return nil, err
		}
		if err != nil {
			return &outcome{err: err, retry: true}, nil
		}
		return nil, nil
	}
	op := func() (struct{}, error) {
		attempts++
		o, stop := checked(target)
		if stop != nil {
			return struct{}{}, backoff.Permanent(stop)
		}
		sent := o == nil
		var at *url.URL
		if sent {
			o, at = p.attempt(ctx, m.UUID, d, open, put)
		}
		if put != target && sent {
			if o == nil {
				// Renamed where the PUT landed (after a 307/308, not
				// where it was sent), in that folder; looked at again
				// first: a newer file may have come during the upload.
				final := at.JoinPath("..", url.PathEscape(d.Name))
				if o, stop = checked(final); stop == nil && o == nil {
					o = p.move(ctx, at, final)
				}
			}
			if o != nil || stop != nil {
				p.discard(ctx, at, log)
			}
			if stop != nil {
				return struct{}{}, backoff.Permanent(stop)
			}
		}
		if o == nil {
			return struct{}{}, nil
		}
		last = fmt.Errorf("%s: %w", where, o.err)
		switch {
		case o.permanent:
			return struct{}{}, backoff.Permanent(exchange.Permanent(last))
		case !o.retry:
			return struct{}{}, backoff.Permanent(last)
		case o.after > 0:
			return struct{}{}, &retryAfterErr{err: last, after: &backoff.RetryAfterError{Duration: o.after}}
		}
		return struct{}{}, last
	}
	started := time.Now()
	_, err = backoff.Retry(ctx, op,
		backoff.WithBackOff(&backoff.ExponentialBackOff{
			InitialInterval:     p.retry.initial,
			RandomizationFactor: 0.2,
			Multiplier:          2,
			MaxInterval:         p.retry.maxInterval,
		}),
		backoff.WithMaxTries(p.retry.tries),
		backoff.WithMaxElapsedTime(p.retry.elapsed),
		backoff.WithNotify(func(err error, wait time.Duration) {
			// Show the trouble while Publish still retries.
			p.Last.Set(err)
			log.Warn("delivery attempt failed; retrying", "attempt", attempts, "err", err, "retry_in", wait.Round(time.Millisecond))
		}))
	if err == nil {
		log.Debug("delivered", "bytes", d.Size, "attempts", attempts)
		return nil
	}
	var stop *backoff.PermanentError
	if errors.As(err, &stop) {
		err = stop.Err
	}
	var ra *retryAfterErr
	if errors.As(err, &ra) {
		err = ra.err
	}
	if exchange.IsPermanent(err) {
		return err
	}
	if ctx.Err() != nil {
		switch {
		case last == nil:
			return fmt.Errorf("%s: %w", where, context.Cause(ctx))
		case errors.Is(last, ctx.Err()):
			return last
		}
		return fmt.Errorf("%w (stopped: %w)", last, context.Cause(ctx))
	}
	if attempts > 1 {
		return fmt.Errorf("%w (%d attempts in %s)", err, attempts, time.Since(started).Round(time.Second))
	}
	return err
}

// attempt sends the file once; nil means delivered, at where (target, or
// where redirects took it).
func (p *Publisher) attempt(ctx context.Context, id string, d exchange.Delivery, open func(context.Context) (io.ReadCloser, error), target *url.URL) (o *outcome, at *url.URL) {
	at = target
	return p.send(ctx, id, d, open, target, &at), at
}

// send is attempt's request; it sets *at to where the answer came from.
func (p *Publisher) send(ctx context.Context, id string, d exchange.Delivery, open func(context.Context) (io.ReadCloser, error), target *url.URL, at **url.URL) *outcome {
	rctx, guard, done := p.c.newAttemptContext(ctx)
	defer done()
	// sent is the body the transport took last (it asks again for a
	// redirect or a retried connection): what it has sent of the file.
	var sent atomic.Pointer[sendBody]
	newBody := func() (io.ReadCloser, error) {
		if d.Size == 0 {
			return stdhttp.NoBody, nil
		}
		r, err := open(rctx)
		if err != nil {
			return nil, fmt.Errorf("open body: %w", err)
		}
		b := newSendBody(r, d.Size, d.SHA256, guard)
		sent.Store(b)
		return b, nil
	}
	body, err := newBody()
	if err != nil {
		return &outcome{err: err, retry: !exchange.IsPermanent(err), permanent: exchange.IsPermanent(err)}
	}
	req, err := stdhttp.NewRequestWithContext(rctx, p.c.cfg.Method, target.String(), body)
	if err != nil {
		body.Close()
		return &outcome{err: err}
	}
	req.ContentLength = d.Size
	req.GetBody = newBody
	if err := p.c.authorize(req); err != nil {
		body.Close()
		return &outcome{err: err}
	}
	h := req.Header
	h.Set("Content-Type", contentType(d.Name))
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": d.Name}))
	h.Set(HeaderIdempotencyKey, id)
	h.Set(HeaderFrom, exchange.EncodeHeaderValue(d.Header.From))
	h.Set(HeaderTo, exchange.EncodeHeaderValue(d.Header.To))
	if !d.Header.ByName() {
		// A message routed by its file name has no plan or numbers to
		// tell: the headers are left out rather than sent empty or 0.
		h.Set(HeaderPlan, exchange.EncodeHeaderValue(d.Header.ExchangePlan))
		h.Set(HeaderMessageNo, strconv.FormatUint(d.Header.MessageNo, 10))
		h.Set(HeaderReceivedNo, strconv.FormatUint(d.Header.ReceivedNo, 10))
	}
	h.Set(HeaderFile, exchange.EncodeHeaderValue(d.Name))
	if d.SHA256 != "" {
		h.Set(HeaderSHA256, d.SHA256)
	}

	resp, err := p.c.hc.Do(req)
	if err != nil {
		err = requestErr(rctx, err)
		switch {
		case ctx.Err() != nil:
			return &outcome{err: err}
		case errors.Is(err, errRedirect), certError(err):
			return &outcome{err: err}
		case exchange.IsPermanent(err):
			// The stored file found damaged while it went out: no retry
			// heals it, none re-sends it.
			return &outcome{err: err, permanent: true}
		}
		return &outcome{err: err, retry: true}
	}
	defer resp.Body.Close()
	if resp.Request != nil && resp.Request.URL != nil {
		*at = resp.Request.URL
	}
	reply := guardedReader{r: resp.Body, g: guard}
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		if b := sent.Load(); b != nil && b.left.Load() > 0 {
			// Go's transport hands over an answer that comes while the
			// body is still going out: a service (or a proxy, a login
			// page) that says OK after the first bytes did not take the
			// file.
			return &outcome{err: fmt.Errorf("%s before the whole file was sent (%d of %d bytes)", resp.Status, d.Size-b.left.Load(), d.Size), retry: true}
		}
		b, cut, err := readReply(reply)
		if err != nil {
			// What came may be the first bytes of 1C's {"error": true}:
			// not proof of a delivery (found by review). The
			// Idempotency-Key lets the service drop the repeat.
			return &outcome{err: fmt.Errorf("%s, but its reply broke off: %w", resp.Status, err), retry: true}
		}
		if code == stdhttp.StatusOK && htmlPage(b) {
			// A login page or a proxy's page answering in the service's
			// place, having read as much of the body as it cared to (a
			// message of a few hundred KB is all in the socket's buffers
			// by then, so the check above cannot see it): the endpoint's
			// trouble, the same for every message. Only a 200: Apache's
			// WebDAV answers 201 Created with an HTML page of that name.
			return &outcome{err: fmt.Errorf("%s with an HTML page (%s), not the service's answer: a login page or a proxy in between?", resp.Status, pageTitle(b))}
		}
		if desc, failed := oneCError(b, cut); failed {
			return &outcome{err: fmt.Errorf("%s: the service reported an error: %s", resp.Status, desc), permanent: true}
		}
		drain(reply)
		return nil
	case code == stdhttp.StatusRequestTimeout, code == stdhttp.StatusTooEarly, code == stdhttp.StatusTooManyRequests, code >= 500,
		code == stdhttp.StatusLocked: // WebDAV: another client's lock on the file (as at the MOVE)
		e := statusError(resp, reply)
		return &outcome{err: e, retry: true, after: retryAfter(resp.Header.Get("Retry-After"), time.Now(), p.retry.maxRetryAfter)}
	case code == stdhttp.StatusUnauthorized, code == stdhttp.StatusForbidden, code == stdhttp.StatusProxyAuthRequired, code >= 300 && code < 400,
		// WebDAV: the folder the file goes in does not exist (RFC 4918
		// 9.7.1), the same for every message.
		code == stdhttp.StatusConflict && p.c.cfg.Method == stdhttp.MethodPut:
		// The endpoint's trouble (credentials, the user's rights to the
		// 1C HTTP service or to the WebDAV folder, a redirect to a GET):
		// the same for every message, so not this message's dead letter;
		// once it is fixed everything queued goes on by itself.
		return &outcome{err: statusError(resp, reply)}
	case code >= 400 && code < 500:
		return &outcome{err: statusError(resp, reply), permanent: true}
	}
	return &outcome{err: statusError(resp, reply)}
}

// tempSuffix names the file a WebDAV delivery PUTs before it renames it to
// the message's name: 1C reads only Message_*.xml|.zip, so it never sees a
// file still being written, nor one whose upload broke off.
const tempSuffix = ".part"

// move renames the file PUT at from to to with a WebDAV MOVE (Overwrite:
// T, as a rename over the final name); nil means done. A failure is the
// endpoint's trouble, never the message's dead letter.
func (p *Publisher) move(ctx context.Context, from, to *url.URL) *outcome {
	rctx, _, done := p.c.newAttemptContext(ctx)
	defer done()
	fail := func(err error) error { return fmt.Errorf("MOVE %s to its name: %w", path.Base(from.Path), err) }
	req, err := stdhttp.NewRequestWithContext(rctx, "MOVE", from.String(), nil)
	if err != nil {
		return &outcome{err: fail(err)}
	}
	if err := p.c.authorizeAfterRedirect(req); err != nil {
		return &outcome{err: fail(err)}
	}
	req.Header.Set("Destination", to.String())
	req.Header.Set("Overwrite", "T")
	// Not redirected: the Destination would still name the old place.
	hc := *p.c.hc
	hc.CheckRedirect = func(*stdhttp.Request, []*stdhttp.Request) error { return stdhttp.ErrUseLastResponse }
	resp, err := hc.Do(req)
	if err != nil {
		return &outcome{err: fail(requestErr(rctx, err)), retry: ctx.Err() == nil}
	}
	defer resp.Body.Close()
	reply := io.LimitReader(resp.Body, 64<<10)
	switch code := resp.StatusCode; {
	case code == stdhttp.StatusOK, code == stdhttp.StatusCreated, code == stdhttp.StatusNoContent:
		drain(reply)
		return nil
	case code == stdhttp.StatusMultiStatus:
		// RFC 4918: errors stopped the MOVE (a locked destination).
		return &outcome{err: fail(statusError(resp, reply)), retry: true}
	case code == stdhttp.StatusMethodNotAllowed, code == stdhttp.StatusNotImplemented:
		return &outcome{err: fail(fmt.Errorf("%w (the server does not rename with MOVE: if it stores a PUT whole before the name shows, set put_direct: true)", statusError(resp, reply)))}
	case code == stdhttp.StatusRequestTimeout, code == stdhttp.StatusLocked, code == stdhttp.StatusTooManyRequests, code >= 500:
		return &outcome{err: fail(statusError(resp, reply)), retry: true, after: retryAfter(resp.Header.Get("Retry-After"), time.Now(), p.retry.maxRetryAfter)}
	}
	return &outcome{err: fail(statusError(resp, reply))}
}

// checkNotNewer refuses to replace a file of the same channel with a
// higher MessageNo in a WebDAV folder (DESIGN §6.3; found by review: an
// older message replaced a newer one put there another way), and leaves
// one of the same number and size (this message, written by an attempt the
// relay did not live to record) as it is (exchange.CheckReplace). As for
// FTP, only .xml files are read (a zip's header needs the whole file);
// nothing there (404, 410, any answer but 200) or a file that is not a
// message is replaced. An account that may not read the folder (401, 403,
// 405) cannot compare: the channel state is the guard then. A server's
// passing trouble (408, 429, 5xx) fails the attempt.
//
// Under d.Keep (a sequential channel) a lower number its node has not
// acknowledged is not replaced either (exchange.ErrUnread); a zip there
// (asked with HEAD) or a file the account may not read (401, 403, 405)
// is taken for the last number delivered (exchange.CheckUnknown).
func (p *Publisher) checkNotNewer(ctx context.Context, at *url.URL, d exchange.Delivery, log *slog.Logger) error {
	method := stdhttp.MethodGet
	if !strings.EqualFold(path.Ext(d.Name), ".xml") {
		if !d.Keep.On {
			return nil
		}
		method = stdhttp.MethodHead
	}
	rctx, guard, done := p.c.newAttemptContext(ctx)
	defer done()
	fail := func(err error) error {
		return fmt.Errorf("%s %s to compare its number: %w", method, path.Base(at.Path), err)
	}
	req, err := stdhttp.NewRequestWithContext(rctx, method, at.String(), nil)
	if err != nil {
		return fail(err)
	}
	if err := p.c.authorizeAfterRedirect(req); err != nil {
		return fail(err)
	}
	resp, err := p.c.hc.Do(req)
	if err != nil {
		return fail(requestErr(rctx, err))
	}
	defer resp.Body.Close()
	switch code := resp.StatusCode; {
	case code == stdhttp.StatusRequestTimeout, code == stdhttp.StatusTooManyRequests, code >= 500:
		return fail(statusError(resp, io.LimitReader(resp.Body, 64<<10)))
	case code == stdhttp.StatusUnauthorized, code == stdhttp.StatusForbidden, code == stdhttp.StatusMethodNotAllowed:
		p.noReads.Do(func() {
			log.Warn("the account may not read the folder (GET refused): the file there cannot be compared with the message; JetStream's channel state alone keeps older messages from replacing newer ones", "status", resp.Status)
		})
		// A write-only account (Apache answers its GET with 401 too)
		// delivers; a refused password, under a hold, shows in its text
		// (found by review, twice).
		return exchange.CheckUnknown(display(at), method+" refused: "+resp.Status, d.Header, d.Keep)
	case code != stdhttp.StatusOK:
		return nil // nothing there (404, 410, 204)
	case method == stdhttp.MethodHead:
		return exchange.CheckUnknown(display(at), exchange.WhyZip, d.Header, d.Keep)
	}
	// Through the idle guard: a body that stalls is cut at
	// response_timeout, not at timeout (found by review).
	have, err := exchange.ReadHeader(guardedReader{r: resp.Body, g: guard}, p.c.cfg.Limits.WithDefaults())
	switch {
	case err == nil:
	case exchange.IsVerdict(err):
		return nil // not a message (a login page, a truncated file): ours replaces it
	default:
		return fail(requestErr(rctx, err))
	}
	return exchange.CheckReplace(display(at), have, resp.ContentLength, d.Header, d.Size, d.Keep)
}

// stopDiscardWait bounds the DELETE of a temporary file whose PUT relay's
// stop cut short, which holds the stop up.
const stopDiscardWait = 3 * time.Second

// discard deletes the temporary file of a PUT that failed, if the server
// kept any of it: a file 1C never reads, but that takes space. Best effort;
// also when relay is stopping (briefly): the next PUT of the name would
// replace the file, but for a node taken out of routing.yaml none comes.
func (p *Publisher) discard(ctx context.Context, u *url.URL, log *slog.Logger) {
	wait := p.c.cfg.ConnectTimeout.Std() + 10*time.Second
	if ctx.Err() != nil {
		ctx, wait = context.WithoutCancel(ctx), min(wait, stopDiscardWait)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	req, err := stdhttp.NewRequestWithContext(ctx, stdhttp.MethodDelete, u.String(), nil)
	if err == nil {
		err = p.c.authorizeAfterRedirect(req)
	}
	if err != nil {
		return
	}
	resp, err := p.c.hc.Do(req)
	if err != nil {
		log.Debug("temporary file not deleted", "url", display(u), "err", err)
		return
	}
	drain(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// sendBody streams the file to the connection through an
// exchange.WholeReader: the transport sends exactly Content-Length bytes
// and only then reads on, so a file found wrong at its end (the store's
// digest, the sha256, more bytes than the size) must fail before its last
// byte, or the service would already hold a complete request with it. It
// also kicks the idle guard while the connection takes bytes.
type sendBody struct {
	r    io.ReadCloser
	w    *exchange.WholeReader
	left atomic.Int64 // not yet handed to the transport; read by attempt while it sends
	g    *idleGuard
}

func newSendBody(r io.ReadCloser, size int64, sha256hex string, g *idleGuard) *sendBody {
	b := &sendBody{r: r, w: exchange.NewWholeReader(r, size, sha256hex), g: g}
	b.left.Store(size)
	return b
}

func (b *sendBody) Read(p []byte) (int, error) {
	if b.w.Left() == 0 {
		// The transport's look past Content-Length: the guard stays
		// paused, the wait for the answer is response_timeout's.
		return 0, io.EOF
	}
	b.g.kick()
	n, err := b.w.Read(p)
	b.left.Store(b.w.Left())
	if b.w.Left() == 0 {
		// All sent: the wait for the answer is response_timeout's.
		b.g.pause()
	}
	return n, err
}

func (b *sendBody) Close() error { return b.r.Close() }

// contentType is the media type of an exchange file by its extension.
func contentType(name string) string {
	if strings.HasSuffix(strings.ToLower(name), ".zip") {
		return "application/zip"
	}
	return "application/xml"
}

// maxReply is how much of a 2xx reply is read for 1C's error convention.
const maxReply = 64 << 10

// readReply reads the start of a 2xx reply (at most maxReply), without a
// BOM and the space around it; cut says it went on past that, err that it
// broke off before.
func readReply(r io.Reader) (b []byte, cut bool, err error) {
	b, err = io.ReadAll(io.LimitReader(r, maxReply+1))
	if cut = len(b) > maxReply; cut {
		b = b[:maxReply]
	}
	return bytes.TrimSpace(bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))), cut, err
}

// htmlPage reports whether a reply is an HTML document: with a 200, what
// a login page or a proxy answers, not a 1C HTTP service. An XML prolog
// and comments before it (XHTML portals write both) are passed over.
func htmlPage(b []byte) bool {
	for {
		b = bytes.TrimSpace(b)
		var skip []byte
		switch {
		case bytes.HasPrefix(b, []byte("<?")):
			skip = []byte("?>")
		case bytes.HasPrefix(b, []byte("<!--")):
			skip = []byte("-->")
		}
		if skip == nil {
			break
		}
		_, rest, ok := bytes.Cut(b, skip)
		if !ok {
			return false
		}
		b = rest
	}
	head := strings.ToLower(string(b[:min(len(b), 16)]))
	return strings.HasPrefix(head, "<!doctype html") || strings.HasPrefix(head, "<html")
}

// pageTitle names an HTML page in an error: its title, else its start.
func pageTitle(b []byte) string {
	low := bytes.ToLower(b)
	if i := bytes.Index(low, []byte("<title")); i >= 0 {
		if j := bytes.IndexByte(low[i:], '>'); j >= 0 {
			rest := b[i+j+1:]
			if k := bytes.Index(bytes.ToLower(rest), []byte("</title")); k >= 0 {
				return fmt.Sprintf("title %q", snippet(bytes.NewReader(rest[:k]), 80))
			}
		}
	}
	return fmt.Sprintf("%q", snippet(bytes.NewReader(b), 80))
}

// oneCError reports whether a 2xx reply (see readReply) is 1C's
// remote-query error convention {"error": true, "errorDescription": "..."}.
func oneCError(b []byte, cut bool) (string, bool) {
	if len(b) == 0 || b[0] != '{' {
		return "", false
	}
	var v struct {
		Error            any    `json:"error"`
		ErrorDescription string `json:"errorDescription"`
	}
	if json.Unmarshal(b, &v) != nil {
		// Not a whole document: a reply over the 64 KiB read (a long
		// 1C exception text) is cut, and was taken for no error at all
		// (found by review). Its error flag and the start of its
		// description are looked for as they are written.
		if !cut {
			return "", false
		}
		if loc := cutErrorTrue.FindIndex(b); loc == nil || jsonDepth(b[:loc[0]]) != 1 {
			return "", false
		}
		desc := "error: true (the reply is longer than what was read)"
		if m := cutErrorDesc.FindSubmatch(b); m != nil {
			desc = strings.Join(strings.Fields(string(m[1])), " ") + " … (cut)"
		}
		return desc, true
	}
	switch e := v.Error.(type) {
	case bool:
		if !e {
			return "", false
		}
	case string:
		if !strings.EqualFold(e, "true") {
			return "", false
		}
	default:
		return "", false
	}
	desc := strings.Join(strings.Fields(v.ErrorDescription), " ")
	if desc == "" {
		desc = "error: true without errorDescription"
	}
	return desc, true
}

// jsonDepth is how deep in objects and arrays the end of the JSON text b
// is (strings passed over): 1 is a key of the top-level object.
func jsonDepth(b []byte) int {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
		}
	}
	return depth
}

// cutErrorTrue and cutErrorDesc find 1C's error flag and the start of its
// description in a reply cut before its end.
var (
	cutErrorTrue = regexp.MustCompile(`"error"\s*:\s*(?:true|"(?i:true)")`)
	cutErrorDesc = regexp.MustCompile(`"errorDescription"\s*:\s*"((?:[^"\\]|\\.){0,300})`)
)

// retryAfter reads a Retry-After header (seconds or an HTTP date), at most
// max; 0 when absent or unreadable.
func retryAfter(v string, now time.Time, limit time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(limit/time.Second) {
			return limit
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := stdhttp.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), limit)
}
