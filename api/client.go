package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/relay1c/relay/pipeline"
)

// Client talks to a running relay's API; the CLI uses it.
type Client struct {
	// Base is http://host:port of relay.listen.
	Base string
	// Token is the bearer token, if the relay requires one.
	Token string
	// TokenHint, when set, follows the relay's 401: how to give the
	// token (relay's CLI names the variable).
	TokenHint string
	HTTP      *http.Client
	// pushAnswer bounds the wait for a push's answer once its file is
	// sent (0: slowWait); push is the transport that bounds it, made
	// once, so that pushes share their connections.
	pushAnswer time.Duration
	push       *http.Transport
	// answerWait is the wait named when an answer did not come (0: the
	// HTTP client's timeout).
	answerWait time.Duration
}

// NewClient makes a client for the relay listening on addr.
func NewClient(addr, token string) *Client {
	return &Client{Base: "http://" + addr, Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}, push: answerBounded(slowWait)}
}

// answerBounded is a transport whose answers must begin within d of the
// request's end: the upload itself has no limit.
func answerBounded(d time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = d
	return t
}

// maxReply bounds how much of a reply the client reads.
const maxReply = 64 << 20

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	return c.send(ctx, method, path, nil, nil, out)
}

// send is do with a request body.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader, size *int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return err
	}
	if size != nil {
		req.ContentLength = *size
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	// A request that never got a connection (a host that drops it) times
	// out too, and is no request the relay may be at work on.
	var connected atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	}))
	resp, err := c.HTTP.Do(req)
	var ne net.Error
	switch {
	case errors.Is(err, ErrChanged):
		return err
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", method, path, context.Cause(ctx))
	case errors.As(err, &ne) && ne.Timeout() && connected.Load():
		// It is running and at work on the request: a retry or drop may
		// have been done (found by review: "not reachable").
		return fmt.Errorf("relay at %s did not answer within %s; it may still be at work, and what was asked may have been done: look again with relay status or relay dead list: %w", c.Base, cmp.Or(c.answerWait, c.HTTP.Timeout), err)
	case err != nil:
		return fmt.Errorf("relay is not reachable at %s (is `relay run` running with this config?): %w", c.Base, err)
	}
	defer resp.Body.Close()
	reply := io.LimitReader(resp.Body, maxReply)
	if resp.StatusCode >= 300 {
		var e ErrorBody
		msg := fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		if json.NewDecoder(reply).Decode(&e) == nil && e.Error != "" {
			msg = e.Error
		}
		if resp.StatusCode == http.StatusUnauthorized && c.TokenHint != "" {
			msg += " (" + c.TokenHint + ")"
		}
		return errors.New(msg)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	return json.NewDecoder(reply).Decode(out)
}

// Channels lists channel state.
func (c *Client) Channels(ctx context.Context) ([]ChannelView, error) {
	var out []ChannelView
	return out, c.do(ctx, http.MethodGet, "/api/v1/channels", &out)
}

// Nodes lists the configured nodes.
func (c *Client) Nodes(ctx context.Context) ([]NodeView, error) {
	var out []NodeView
	return out, c.do(ctx, http.MethodGet, "/api/v1/nodes", &out)
}

// DeadLetters lists dead letters.
func (c *Client) DeadLetters(ctx context.Context) ([]pipeline.DeadLetter, error) {
	var out []pipeline.DeadLetter
	return out, c.do(ctx, http.MethodGet, "/api/v1/dead", &out)
}

// DeadLetter reads one dead letter.
func (c *Client) DeadLetter(ctx context.Context, seq uint64) (pipeline.DeadLetter, error) {
	var out pipeline.DeadLetter
	return out, c.do(ctx, http.MethodGet, "/api/v1/dead/"+strconv.FormatUint(seq, 10), &out)
}

// Trace reads the recorded steps of the messages with this id or file name.
func (c *Client) Trace(ctx context.Context, match string) ([]pipeline.Event, error) {
	return c.TraceLimit(ctx, match, 0)
}

// TraceLimit is Trace returning at most limit events, the newest (0: the
// relay's default, pipeline.DefaultTraceLimit).
func (c *Client) TraceLimit(ctx context.Context, match string, limit int) ([]pipeline.Event, error) {
	var out []pipeline.Event
	q := "/api/v1/trace?q=" + url.QueryEscape(match)
	if limit > 0 {
		q += "&limit=" + strconv.Itoa(limit)
	}
	return out, c.do(ctx, http.MethodGet, q, &out)
}

// slowWait bounds the requests that may take long on the relay's side: a
// retry inspects the stored file again, a drop looks through the queue.
const slowWait = 10 * time.Minute

// waiting is c with its requests waiting up to d for an answer (0: as
// long as their context allows).
func (c *Client) waiting(d time.Duration) *Client {
	hc := *c
	long := *c.HTTP
	long.Timeout = d
	hc.HTTP = &long
	return &hc
}

// RetryDead queues a dead letter again and returns the message id.
func (c *Client) RetryDead(ctx context.Context, seq uint64) (string, error) {
	var out map[string]string
	err := c.waiting(slowWait).do(ctx, http.MethodPost, "/api/v1/dead/"+strconv.FormatUint(seq, 10)+"/retry", &out)
	return out["id"], err
}

// DropDead deletes a dead letter and its payload.
func (c *Client) DropDead(ctx context.Context, seq uint64) error {
	return c.waiting(slowWait).do(ctx, http.MethodDelete, "/api/v1/dead/"+strconv.FormatUint(seq, 10), nil)
}

// Skip lets a sequential channel go on without the numbers up to no it
// waits for, and returns the channel's state after.
func (c *Client) Skip(ctx context.Context, plan, from, to string, no uint64) (pipeline.Channel, error) {
	var out pipeline.Channel
	q := url.Values{"plan": {plan}, "from": {from}, "to": {to}, "through": {strconv.FormatUint(no, 10)}}
	err := c.do(ctx, http.MethodPost, "/api/v1/channels/skip?"+q.Encode(), &out)
	return out, err
}

// Push sends one message file to the relay (POST /api/v1/messages). The
// file streams; the client waits as long as ctx allows, not its usual 30 s.
func (c *Client) Push(ctx context.Context, name string, r io.Reader, size int64) (PushReply, error) {
	var out PushReply
	hc := c.waiting(0)
	// No limit on the upload, but on the answer once it is in: the relay
	// stores the file then (minutes for gigabytes, at most slowWait); one
	// that never answers held relay send for ever (found by review).
	hc.answerWait = cmp.Or(c.pushAnswer, slowWait)
	if c.push != nil && c.pushAnswer == 0 {
		hc.HTTP.Transport = c.push
	} else {
		t := answerBounded(hc.answerWait)
		defer t.CloseIdleConnections()
		hc.HTTP.Transport = t
	}
	// Exactly size bytes: with a zero length and a body, Go's client would
	// send the body chunked until its end (a file that says 0 and reads
	// on), and a file cut at its stated size while it grows would be
	// stored as a shorter message.
	var body io.Reader = &exactReader{r: r, left: size, size: size}
	if size <= 0 {
		var one [1]byte
		if n, _ := r.Read(one[:]); n > 0 {
			return out, fmt.Errorf("%w: it had 0 bytes", ErrChanged)
		}
		body = http.NoBody
	}
	err := hc.send(ctx, http.MethodPost, "/api/v1/messages?name="+url.QueryEscape(name), body, &size, &out)
	return out, err
}

// ErrChanged says a file pushed was not the size it had when it was
// looked at: it was still being written, or rewritten, while it was sent.
var ErrChanged = errors.New("the file changed while it was sent")

// exactReader passes size bytes of r and fails when r has more or fewer.
type exactReader struct {
	r          io.Reader
	left, size int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left == 0 {
		return 0, io.EOF
	}
	n, err := e.r.Read(p[:min(int64(len(p)), e.left)])
	e.left -= int64(n)
	switch {
	case e.left > 0 && err == io.EOF:
		return n, fmt.Errorf("%w: %d bytes, not the %d it had", ErrChanged, e.size-e.left, e.size)
	case e.left == 0:
		// Before its last bytes go: a file that grew, or that fails to
		// read on, must not reach the relay as a complete request.
		if err != nil && err != io.EOF {
			return 0, err
		}
		var one [1]byte
		m, perr := e.r.Read(one[:])
		if m > 0 {
			return 0, fmt.Errorf("%w: more than its %d bytes", ErrChanged, e.size)
		}
		if perr != nil && perr != io.EOF {
			return 0, fmt.Errorf("read past its %d bytes: %w", e.size, perr)
		}
		return n, io.EOF
	}
	return n, err
}
