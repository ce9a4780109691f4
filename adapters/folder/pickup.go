package folder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Options configure a Pickup.
type Options struct {
	// Node is the node code whose outgoing folder this is; only files that
	// name it as sender are taken.
	Node string
	// Adapter names the transport in logs ("dir", "ftp").
	Adapter string
	// Settle is how long size and mtime must stay unchanged before a file is read.
	Settle time.Duration
	// PollInterval is the rescan period (behind fsnotify where there is one).
	PollInterval time.Duration
	// IncompleteTimeout is how long a stable but incomplete file is waited
	// for before it is dead-lettered.
	IncompleteTimeout time.Duration
	// TrustMTime lets the settle time of a version run from its mtime
	// rather than from the scan that first saw it (mtime moves with every
	// write): a file last written Settle ago is taken when first seen. Only
	// for sources whose clock is the relay's (a local disk); the
	// completeness check applies all the same.
	TrustMTime bool
	// After is what happens to a file once JetStream holds it.
	After config.After
	// Memory is required for after: keep.
	Memory Memory
	// Limits bound what a file may be.
	Limits exchange.Limits
	// Passwords read password-protected zips; nil: none.
	Passwords Passwords
	Log       *slog.Logger
}

// Pickup is a Watermill Subscriber that emits one message per complete
// exchange file of a Source and commits the file only when the message is
// acked. A nacked file stays and is offered again after a backoff.
type Pickup struct {
	src Source
	o   Options
	log *slog.Logger
	now func() time.Time

	trouble.Last
	// commitTrouble is a failed commit (no right to delete in the outbox,
	// a move folder that cannot be made): kept until a commit succeeds,
	// since the listings that clear Last succeed all the while.
	commitTrouble trouble.Last
	// readTrouble is a file that could not be read (the user may not read
	// it, a lock), readFile its name: kept until that file is read or
	// leaves the folder, for the same reason.
	readTrouble trouble.Last
	readMu      sync.Mutex
	readFile    string

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ message.Subscriber = (*Pickup)(nil)

// NewPickup makes the pickup of o.Node from src.
func NewPickup(src Source, o Options) (*Pickup, error) {
	if o.Settle < 0 || o.PollInterval < 100*time.Millisecond || o.IncompleteTimeout < o.Settle {
		return nil, fmt.Errorf("%s %s: bad timing: settle %s, poll_interval %s, incomplete_timeout %s", o.Adapter, o.Node, o.Settle, o.PollInterval, o.IncompleteTimeout)
	}
	if o.After.Action == config.AfterKeep && o.Memory == nil {
		return nil, fmt.Errorf("%s %s: after: keep needs a memory", o.Adapter, o.Node)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Limits == (exchange.Limits{}) {
		o.Limits = exchange.DefaultLimits()
	}
	return &Pickup{
		src: src, o: o,
		log:     o.Log.With("node", o.Node, "adapter", o.Adapter),
		now:     time.Now,
		closing: make(chan struct{}),
	}, nil
}

// candidate is what the scanner knows of one file.
type candidate struct {
	size    int64
	mtime   time.Time
	since   time.Time // when this size/mtime was first seen
	listed  time.Time // when a scan last listed this size/mtime
	retryAt time.Time // after a nack, a failed fetch or an incomplete read
	fails   int
}

// Subscribe starts scanning; the topic is ignored (a pickup has one source).
// The channel closes when ctx ends or Close is called.
func (p *Pickup) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	var notify <-chan struct{}
	if n, ok := p.src.(Notifier); ok {
		ch, err := n.Notify(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		notify = ch
	}
	// Close ends the context too: the loop may be waiting for the source
	// (an FTP listing queued behind a take's long download), and only the
	// context cuts that short.
	go func() {
		select {
		case <-p.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	out := make(chan *message.Message)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		var takes sync.WaitGroup
		p.loop(ctx, notify, out, &takes)
		// Takes still running send on out: stop them before closing it.
		cancel()
		takes.Wait()
		close(out)
	}()
	return out, nil
}

// scanner is the loop's state: what it knows of each file, and which files
// are in the pipeline right now.
type scanner struct {
	seen    map[string]*candidate
	busy    map[string]bool
	results chan takeResult
	waiting bool // ready files were left for a free slot
	takes   *sync.WaitGroup
}

// takeResult is a take's verdict on one file, sent back to the loop that
// owns the candidates.
type takeResult struct {
	name  string
	c     candidate // the candidate as the take left it
	size  int64     // the version that was taken
	mtime time.Time
}

func (p *Pickup) loop(ctx context.Context, notify <-chan struct{}, out chan<- *message.Message, takes *sync.WaitGroup) {
	sc := &scanner{seen: map[string]*candidate{}, busy: map[string]bool{}, results: make(chan takeResult, takeParallel), takes: takes}
	w := newWake()
	defer w.t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.closing:
			return
		case _, ok := <-notify:
			if !ok {
				notify = nil
				continue
			}
			// Let the writer go on; look again once it could have settled.
			// Not later than a look already planned: in a busy folder the
			// events never pause, and pushing the look back on each of them
			// would leave settled files waiting.
			w.within(p.o.Settle)
			continue
		case r := <-sc.results:
			delete(sc.busy, r.name)
			if c := sc.seen[r.name]; c != nil && c.size == r.size && c.mtime.Equal(r.mtime) {
				*c = r.c
			}
			// A freed slot serves files that waited for one; otherwise the
			// next look comes with the timer or a change in the folder.
			if sc.waiting || len(sc.busy) == 0 {
				w.within(0)
			}
			continue
		case <-w.t.C:
			w.fired()
		}
		next := p.scan(ctx, sc, out)
		if next <= 0 || next > p.o.PollInterval {
			next = p.o.PollInterval
		}
		w.within(next)
	}
}

// wake is the loop's timer and when it is due (by the wall clock the timer
// runs on).
type wake struct {
	t  *time.Timer
	at time.Time // zero once fired
}

func newWake() *wake { return &wake{t: time.NewTimer(0), at: time.Now()} }

// within makes the timer fire within d: sooner if it is due later (or not
// due at all), never later than already planned.
func (w *wake) within(d time.Duration) {
	at := time.Now().Add(d)
	if !w.at.IsZero() && !w.at.After(at) {
		return
	}
	w.t.Stop()
	select {
	case <-w.t.C:
	default:
	}
	w.t.Reset(d)
	w.at = at
}

// fired records that the timer's value was received.
func (w *wake) fired() { w.at = time.Time{} }

// scan lists the folder once, starts a take for every settled file not yet
// in the pipeline (oldest first, at most takeParallel at once), and returns
// when it wants to look again. Files in one folder belong to different
// channels (a channel has one file name), so they travel side by side.
func (p *Pickup) scan(ctx context.Context, sc *scanner, out chan<- *message.Message) time.Duration {
	files, err := p.src.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.Last.Set(err)
			p.log.Error("cannot list pickup folder", "err", err)
		}
		return 0
	}
	p.Last.Set(nil)
	now := p.now()
	next := time.Duration(0)
	wantAt := func(t time.Time) {
		if d := t.Sub(now); d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	present := map[string]bool{}
	var ready []string
	for _, f := range files {
		if !IsMessageName(f.Name) {
			continue
		}
		if ForAnotherNode(f.Name, p.o.Node) {
			continue // another node's file, e.g. one delivered into a shared folder
		}
		present[f.Name] = true
		if sc.busy[f.Name] {
			continue // its take decides; the candidate is not touched meanwhile
		}
		c := sc.seen[f.Name]
		if c == nil || c.size != f.Size || !c.mtime.Equal(f.ModTime) {
			fails := 0
			if c != nil {
				fails = c.fails
			}
			since := now
			if p.o.TrustMTime && !f.ModTime.After(now) {
				// The last write was at mtime: the settle time runs
				// from there, not from when this scan happened to look.
				// A change came after the scan that listed the old
				// version, whatever a coarse mtime says.
				since = f.ModTime
				if floor := now.Add(-p.o.Settle); since.Before(floor) {
					since = floor
				}
				if c != nil && since.Before(c.listed) {
					since = c.listed
				}
			}
			c = &candidate{size: f.Size, mtime: f.ModTime, since: since, fails: fails}
			sc.seen[f.Name] = c
		}
		c.listed = now
		if now.Before(c.since.Add(p.o.Settle)) {
			wantAt(c.since.Add(p.o.Settle))
			continue
		}
		if now.Before(c.retryAt) {
			wantAt(c.retryAt)
			continue
		}
		ready = append(ready, f.Name)
	}
	for name := range sc.seen {
		if !present[name] && !sc.busy[name] {
			delete(sc.seen, name)
			p.readDone(name)
		}
	}
	sort.Slice(ready, func(i, j int) bool {
		a, b := sc.seen[ready[i]], sc.seen[ready[j]]
		if !a.mtime.Equal(b.mtime) {
			return a.mtime.Before(b.mtime)
		}
		return ready[i] < ready[j]
	})
	sc.waiting = false
	for _, name := range ready {
		if len(sc.busy) >= takeParallel {
			sc.waiting = true
			break
		}
		sc.busy[name] = true
		cc := *sc.seen[name]
		sc.takes.Add(1)
		go func() {
			defer sc.takes.Done()
			r := takeResult{name: name, size: cc.size, mtime: cc.mtime}
			p.take(ctx, name, &cc, out)
			r.c = cc
			select {
			case sc.results <- r:
			case <-ctx.Done():
			case <-p.closing:
			}
		}()
	}
	return next
}

// takeParallel is how many files of one folder are in the pipeline at once.
const takeParallel = 8

// fingerprint identifies one version of a file for keep-memory and for the
// "changed since taken" check.
func fingerprint(size int64, mtime time.Time) string {
	return strconv.FormatInt(size, 10) + "/" + strconv.FormatInt(mtime.UnixNano(), 10)
}

// later schedules the next look at c after a failure.
func (p *Pickup) later(c *candidate) {
	c.retryAt = p.now().Add(Backoff(c.fails))
	c.fails++
}

// take proves one file complete, emits it and waits for the verdict. It
// returns true when the file is done with (committed or left for good).
func (p *Pickup) take(ctx context.Context, name string, c *candidate, out chan<- *message.Message) bool {
	where := p.src.Where(name)
	log := p.log.With("file", where)
	fp := fingerprint(c.size, c.mtime)
	if p.o.After.Action == config.AfterKeep {
		ok, err := p.o.Memory.Seen(ctx, where, fp)
		if err != nil {
			log.Warn("cannot read pickup memory; will retry", "err", err)
			p.later(c)
			return false
		}
		if ok {
			c.retryAt = farFuture
			return true
		}
	}

	if lim := p.o.Limits.MaxSize; lim > 0 && c.size > lim {
		return p.leaveTooLarge(ctx, log, name, where, c, lim, out)
	}
	fetched, err := p.src.Fetch(ctx, File{Name: name, Size: c.size, ModTime: c.mtime})
	if err != nil {
		if ctx.Err() == nil {
			p.readFailed(name, err)
			log.Warn("cannot read the file; will retry", "err", err)
		}
		p.later(c)
		return false
	}
	p.readDone(name)
	defer fetched.Release()
	changed := fetched.Size != c.size
	if !changed && fetched.Copy {
		// 1C may have rewritten the file in place while it was copied:
		// the copy would hold the head of one message and the tail of the
		// next, well-formed and, consecutive messages being often the
		// same size, of the listed size. Only a copy of a file unchanged
		// since its listing is taken.
		now, err := p.src.Stat(ctx, name)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("cannot look at the file after reading it; will retry", "err", err)
			}
			p.later(c)
			return false
		}
		changed = now.Size != c.size || !now.ModTime.Equal(c.mtime)
	}
	if changed {
		// Still being written: wait for it to settle again.
		log.Debug("file changed while it was read; waiting", "listed", c.size, "read", fetched.Size)
		c.size, c.since = -1, p.now()
		c.retryAt = p.now().Add(p.o.Settle)
		return false
	}

	msg, problem := NewMessage(p.o.Node, where, name, fetched, p.o.Limits, p.o.Passwords)
	if errors.Is(problem, exchange.ErrIncomplete) && p.now().Sub(c.since) < p.o.IncompleteTimeout {
		log.Debug("file not complete yet; waiting", "reason", problem)
		c.retryAt = p.now().Add(max(p.o.Settle, time.Second))
		return false
	}
	switch Hand(ctx, p.closing, out, msg) {
	case Acked:
		if !p.commit(ctx, log, name, where, c) {
			// Taking it again at once would only store it again (a
			// duplicate) in a loop as fast as the file reads.
			p.later(c)
			return false
		}
		c.fails = 0
		return true
	case Nacked:
		p.later(c)
		log.Warn("pipeline refused the file; it stays and is retried", "retry_in", c.retryAt.Sub(p.now()).Round(time.Second))
	}
	return false
}

// leaveTooLarge records a file over the size limit as a dead letter without
// its bytes (none are read: the pipeline could not keep them) and leaves the
// file where it is, since committing it would delete or move the only copy.
// It is looked at again once it changes.
func (p *Pickup) leaveTooLarge(ctx context.Context, log *slog.Logger, name, where string, c *candidate, lim int64, out chan<- *message.Message) bool {
	problem := fmt.Errorf("%w: %d bytes, larger than the %d-byte limit; the file is left in place", exchange.ErrTooLarge, c.size, lim)
	msg := fileMessage(p.o.Node, where, name)
	msg.Metadata.Set(exchange.MetaProblem, problem.Error())
	msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(c.size, 10))
	exchange.SetBody(msg, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("")), nil })
	switch Hand(ctx, p.closing, out, msg) {
	case Acked:
		log.Error("file larger than the size limit: dead letter recorded, the file stays", "bytes", c.size, "limit", lim)
		c.retryAt = farFuture
		c.fails = 0
		return true
	case Nacked:
		p.later(c)
	}
	return false
}

// Passwords gives the archive passwords to try, in order, on a
// password-protected zip of the channel from → to (config.ZipPasswords).
type Passwords func(from, to string) []string

// NewMessage is the pipeline message for one fetched file of node, found
// at where under name: its header in the metadata when name and content
// make a valid message, else the problem, also set as MetaProblem so that
// the pipeline dead-letters it. pw (may be nil) reads a password-protected
// zip. The body reads f, which must stay open until the pipeline answers.
func NewMessage(node, where, name string, f Fetched, lim exchange.Limits, pw Passwords) (*message.Message, error) {
	msg := fileMessage(node, where, name)
	info, problem := inspect(name, f, lim, pw)
	if problem != nil {
		msg.Metadata.Set(exchange.MetaProblem, problem.Error())
		msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(f.Size, 10))
	} else {
		exchange.SetHeader(msg, info.Header)
		msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(info.Size, 10))
		msg.Metadata.Set(exchange.MetaSHA256, info.SHA256)
	}
	file, size := f.File, f.Size
	exchange.SetBody(msg, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(file, 0, size)), nil
	})
	return msg, problem
}

// fileMessage is a pipeline message for the file of node found at where
// under name, without its content yet.
func fileMessage(node, where, name string) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), nil)
	msg.Metadata.Set(exchange.MetaNode, node)
	msg.Metadata.Set(exchange.MetaSource, where)
	msg.Metadata.Set(exchange.MetaFileName, name)
	return msg
}

// Verdict is the pipeline's answer to a handed-over message.
type Verdict int

// Verdicts.
const (
	// Stopped: the pickup is stopping, no answer came.
	Stopped Verdict = iota
	// Acked: JetStream holds the message (or its dead letter); commit the source.
	Acked
	// Nacked: the pipeline could not take it now; leave the source and retry.
	Nacked
)

// Hand gives msg to the pipeline on out and waits for its answer, or until
// ctx ends or stop closes.
func Hand(ctx context.Context, stop <-chan struct{}, out chan<- *message.Message, msg *message.Message) Verdict {
	select {
	case out <- msg:
	case <-ctx.Done():
		return Stopped
	case <-stop:
		return Stopped
	}
	select {
	case <-msg.Acked():
		return Acked
	case <-msg.Nacked():
		return Nacked
	case <-ctx.Done():
	case <-stop:
	}
	return Stopped
}

var farFuture = time.Unix(1<<40, 0)

// inspect checks the whole content; the name must agree with the header.
// A password-protected zip is read with the channel's passwords, or routed
// by its name when there are none (exchange.InspectFile).
func inspect(name string, f Fetched, lim exchange.Limits, pw Passwords) (exchange.Info, error) {
	n, err := exchange.ParseName(name)
	if err != nil {
		return exchange.Info{}, err
	}
	var passwords []string
	if pw != nil {
		passwords = pw(n.From, n.To)
	}
	info, err := exchange.InspectFile(f.File, f.Size, lim, n, passwords)
	if err != nil {
		return info, err
	}
	// The name travels with the file: a zip named .xml (or the reverse)
	// would reach the node under a name it cannot read.
	if n.Format != info.Format {
		return info, fmt.Errorf("%w: file name says .%s but the file is %s", exchange.ErrNameMismatch, n.Format, info.Format)
	}
	return info, nil
}

// commit applies `after` once JetStream holds the message. A file that changed
// since it was read is a new message from the node: it is left in place.
// It returns false when the file stays because the commit failed.
func (p *Pickup) commit(ctx context.Context, log *slog.Logger, name, where string, c *candidate) bool {
	now, err := p.src.Stat(ctx, name)
	if err != nil {
		log.Warn("cannot look at the file before commit; it may be taken again and dropped as a duplicate", "err", err)
		return false
	}
	if now.Size != c.size || !now.ModTime.Equal(c.mtime) {
		log.Info("file changed after it was taken; leaving the new version for the next scan")
		return true
	}
	switch p.o.After.Action {
	case config.AfterDelete:
		err = p.src.Remove(ctx, name)
	case config.AfterMove:
		err = p.src.Move(ctx, name, p.o.After.Folder)
	case config.AfterKeep:
		err = p.o.Memory.Remember(ctx, where, fingerprint(c.size, c.mtime))
	}
	if err != nil {
		// The message is safe in JetStream; a second pickup is dropped as a duplicate.
		log.Error("commit failed; the file may be taken again and dropped as a duplicate", "after", p.o.After.String(), "err", err)
		p.commitTrouble.Set(fmt.Errorf("after %s of %s failed (the message is stored; the file will be taken again): %w", p.o.After.String(), name, err))
		return false
	}
	p.commitTrouble.Set(nil)
	log.Debug("committed", "after", p.o.After.String())
	return true
}

// LastError is the pickup's current trouble for `relay status`: the source's
// (cannot list), else a file that cannot be read, else a commit that failed
// last.
func (p *Pickup) LastError() (string, time.Time) {
	if msg, at := p.Last.LastError(); msg != "" {
		return msg, at
	}
	if msg, at := p.readTrouble.LastError(); msg != "" {
		return msg, at
	}
	return p.commitTrouble.LastError()
}

// readFailed records that the file name could not be read.
func (p *Pickup) readFailed(name string, err error) {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	p.readFile = name
	p.readTrouble.Set(err)
}

// readDone clears the read trouble if it is the file name's: it was read,
// or it left the folder.
func (p *Pickup) readDone(name string) {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	if p.readFile == name {
		p.readFile = ""
		p.readTrouble.Set(nil)
	}
}

// Backoff is capped exponential: 1s, 2s, 4s ... 5m.
func Backoff(fails int) time.Duration {
	if fails > 9 {
		fails = 9
	}
	return min(time.Second<<fails, 5*time.Minute)
}

// Close stops the scanner, then closes the source if it is an io.Closer
// (an FTP connection); it is idempotent and safe while a message waits
// for its ack.
func (p *Pickup) Close() error {
	p.closeOnce.Do(func() { close(p.closing) })
	p.wg.Wait()
	if c, ok := p.src.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
