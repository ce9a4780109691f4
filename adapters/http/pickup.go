package http

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	stdhttp "net/http"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/exchange"
)

// Pickup polls an HTTP service for the node's outgoing messages, a
// Watermill Subscriber: every interval it GETs the URL; 204 or 404 means
// nothing waits, 200 is one exchange file. The file streams into the
// spool folder, is checked like any picked-up file and handed to the
// pipeline; a file that is not a valid message (junk body, a name that is
// not Message_*) is handed with its problem and dead-lettered. After an
// acked message the URL is polled again at once (more may wait, for other
// channels), until a channel comes a second time: a service that exports a
// new message on every GET (a 1C HTTP service writing the node's changes
// per request) would otherwise be asked in a loop, every answer a new
// number. A nack or nothing waits for the next interval, a failure backs
// off (1s doubling, at most 5m, never sooner than interval).
//
// HTTP has no commit: the service decides what its next GET returns. A
// service that keeps serving the same file is asked again only every
// interval, and the repeat is not handed again (JetStream would drop it as
// a duplicate anyway).
type Pickup struct {
	c     *client
	spool string
	lim   exchange.Limits
	pw    folder.Passwords
	log   *slog.Logger

	trouble.Last

	folder.Loop

	// last is the sha256 of the last file the pipeline acked, and
	// lastBad why it was dead-lettered (nil: it was a message); run
	// goroutine only.
	last    string
	lastBad error
}

var _ message.Subscriber = (*Pickup)(nil)

// NewPickup makes the pickup of node from an HTTP service; spool is where
// files are downloaded before they are checked and stored.
func NewPickup(node string, cfg Config, pw folder.Passwords, spool string, log *slog.Logger) (*Pickup, error) {
	cfg.role = "pickup"
	c, err := newClient(node, cfg, "http", log)
	if err != nil {
		return nil, err
	}
	return &Pickup{
		c: c, spool: spool, lim: cfg.Limits.WithDefaults(), pw: pw, log: c.log,
	}, nil
}

// Subscribe starts polling; the topic is ignored. The channel closes when
// ctx ends or Close is called.
func (p *Pickup) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	return p.Start(ctx, p.spool, p.log, p.run), nil
}

// Close stops the pickup and drops idle connections; it is idempotent and
// safe while a message waits for its ack.
func (p *Pickup) Close() error {
	err := p.Loop.Close()
	p.c.hc.CloseIdleConnections()
	return err
}

func (p *Pickup) run(ctx context.Context, out chan<- *message.Message) {
	interval := p.c.cfg.Interval.Std()
	fails := 0
	// round holds the channels taken since the last wait.
	round := map[string]bool{}
	for !p.Stopped(ctx) {
		took, err := p.poll(ctx, out)
		if p.Stopped(ctx) {
			return
		}
		trouble := err
		if err == nil && took == "" {
			// Nothing waits: an answer that was not a valid message
			// stays the pickup's trouble until a message comes.
			trouble = p.lastBad
		}
		p.Last.Set(trouble)
		wait := interval
		switch {
		case err != nil:
			wait = max(interval, folder.Backoff(fails))
			fails++
			p.log.Warn("poll failed", "err", err, "retry_in", wait)
		case took != "" && !round[took]:
			fails = 0
			round[took] = true
			continue // more may wait
		case took != "":
			fails = 0
			p.log.Debug("a second message of a channel in one round; asking again after interval", "channel", took)
		default:
			fails = 0
		}
		clear(round)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-p.Closing():
		}
		t.Stop()
	}
}

// poll GETs the URL once; took is the channel (plan/from/to) of a new
// message handed and acked, "" when none was.
func (p *Pickup) poll(ctx context.Context, out chan<- *message.Message) (took string, err error) {
	where := display(p.c.u)
	fail := func(err error) error { return fmt.Errorf("http %s: GET %s: %w", p.c.node, where, err) }
	rctx, guard, done := p.c.newAttemptContext(ctx)
	defer done()
	req, err := stdhttp.NewRequestWithContext(rctx, stdhttp.MethodGet, p.c.u.String(), nil)
	if err != nil {
		return "", fail(err)
	}
	if err := p.c.authorize(req); err != nil {
		return "", fail(err)
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/xml, application/zip, */*;q=0.5")
	}
	resp, err := p.c.hc.Do(req)
	if err != nil {
		if p.Stopped(ctx) {
			return "", nil
		}
		return "", fail(requestErr(rctx, err))
	}
	defer resp.Body.Close()
	body := guardedReader{r: resp.Body, g: guard}
	switch {
	case resp.StatusCode == stdhttp.StatusOK && resp.ContentLength != 0:
	case resp.StatusCode == stdhttp.StatusNoContent, resp.StatusCode == stdhttp.StatusNotFound,
		resp.StatusCode == stdhttp.StatusOK: // with no body, what a 1C service says by HTTPСервисОтвет(200) (found by review)
		drain(body)
		return "", nil
	default:
		return "", fail(statusError(resp, body))
	}

	name := fileName(resp)
	problem := ""
	var f folder.Fetched
	sum := sha256.New()
	if resp.ContentLength > p.lim.MaxSize {
		problem = fmt.Sprintf("the service offers %d bytes, more than the %d-byte limit", resp.ContentLength, p.lim.MaxSize)
		// What tells this message from the channel's next one of the
		// same size (found by review: taken for the file served before,
		// it was never handed on): its headers and first bytes, which
		// hold its number.
		_, _ = io.WriteString(sum, problem+name)
		for _, h := range []string{"ETag", "Last-Modified", HeaderSHA256, "Content-Disposition"} {
			_, _ = io.WriteString(sum, "\n"+resp.Header.Get(h))
		}
		_, _ = io.CopyN(sum, body, oversizeSample)
		f, err = folder.Spool(rctx, p.spool, strings.NewReader(""), 0)
	} else {
		f, err = folder.Spool(rctx, p.spool, io.TeeReader(body, sum), p.lim.MaxSize)
		if errors.Is(err, exchange.ErrTooLarge) {
			problem = fmt.Sprintf("the body is larger than the %d-byte limit", p.lim.MaxSize)
			f, err = folder.Spool(rctx, p.spool, strings.NewReader(""), 0)
		}
	}
	if err != nil {
		if p.Stopped(ctx) {
			return "", nil
		}
		return "", fail(fmt.Errorf("read body: %w", requestErr(rctx, err)))
	}
	guard.stop() // all read: the wait for the pipeline is not the service's
	defer f.Release()
	if f.Size == 0 && problem == "" {
		return "", nil // an empty 200 sent chunked: nothing waits, as above
	}
	digest := hex.EncodeToString(sum.Sum(nil))
	log := p.log.With("file", name, "bytes", f.Size)
	if digest == p.last {
		log.Debug("the service serves the file it served before; asking again after interval")
		return "", p.lastBad
	}

	msg, bad := folder.NewMessage(p.c.node, p.c.cfg.IsNode, where, name, f, p.lim, p.pw)
	if want := strings.ToLower(strings.TrimSpace(resp.Header.Get(HeaderSHA256))); problem == "" && bad == nil && want != "" && msg.Metadata.Get(exchange.MetaSHA256) != want {
		problem = fmt.Sprintf("sha256 of the body is %s, %s says %s", msg.Metadata.Get(exchange.MetaSHA256), HeaderSHA256, want)
	}
	if problem != "" {
		msg.Metadata.Set(exchange.MetaProblem, problem)
	} else if bad != nil {
		problem = bad.Error()
	}
	switch folder.Hand(ctx, p.Closing(), out, msg) {
	case folder.Acked:
		p.last, p.lastBad = digest, nil
		if problem != "" {
			// Not "took": a service answering with something else (a
			// login page, a proxy's error page, an error text that changes
			// every time) is asked again after interval, with backoff,
			// and shows as the pickup's trouble until it serves a message,
			// rather than in a loop of dead letters.
			p.lastBad = fail(fmt.Errorf("%s is not a valid exchange message (dead-lettered): %s", name, problem))
			return "", p.lastBad
		}
		log.Debug("taken")
		return strings.Join([]string{msg.Metadata.Get(exchange.MetaPlan), msg.Metadata.Get(exchange.MetaFrom), msg.Metadata.Get(exchange.MetaTo)}, "/"), nil
	case folder.Nacked:
		log.Warn("pipeline refused the file; asking again after interval")
	}
	return "", nil
}

// oversizeSample is how much of a body over the size limit is read, to
// tell one such message from the next.
const oversizeSample = 64 << 10

// fileName is the name a 200 reply gives its file: Content-Disposition's
// filename (RFC 2231 filename*= or quoted, or as looseFileName reads it),
// else X-Relay-File, else the last element of the path of the URL that
// answered (after redirects: found by review, a file served by a redirect
// took the asked URL's name, next). Only the base name counts.
func fileName(resp *stdhttp.Response) string {
	name := ""
	cd := resp.Header.Get("Content-Disposition")
	if _, params, err := mime.ParseMediaType(cd); err == nil {
		name = params["filename"]
	} else {
		name = looseFileName(cd)
	}
	if name == "" {
		name = exchange.DecodeHeaderValue(resp.Header.Get(HeaderFile))
	}
	if name == "" && resp.Request != nil && resp.Request.URL != nil {
		name = path.Base(resp.Request.URL.Path)
	}
	name = path.Base(strings.ReplaceAll(name, `\`, "/"))
	if name == "." || name == ".." || name == "/" {
		return ""
	}
	return name
}

// looseFileName reads filename= from a Content-Disposition that
// mime.ParseMediaType refuses: a 1C service that writes the header by hand
// ("attachment; filename=" + ИмяФайла) sends the name unquoted, in UTF-8,
// which is not a MIME token. "" when there is none or it is not UTF-8.
func looseFileName(cd string) string {
	_, params, _ := strings.Cut(cd, ";")
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "filename") {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if !utf8.ValidString(v) {
			return ""
		}
		return v
	}
	return ""
}
