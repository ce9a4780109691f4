package folder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	// IsNode tells the configured node codes, to read a name whose codes
	// hold '_' (exchange.Name.MayBeFrom); nil: any code.
	IsNode func(code string) bool
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
	Memory KeepMemory
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
	// files holds, by name, why files cannot be taken (the user may not
	// read one, a lock, a look at it that fails): each kept until that
	// step works for the file or the file leaves the folder, for the same
	// reason.
	filesMu sync.Mutex
	files   map[string]fileTrouble
	// held are the HeldNames of the commits in progress, listedHeld
	// those the last listing had.
	heldMu     sync.Mutex
	held       map[string]bool
	listedHeld map[string]bool

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
		log:   o.Log.With("node", o.Node, "adapter", o.Adapter),
		now:   time.Now,
		files: map[string]fileTrouble{}, held: map[string]bool{},
		closing: make(chan struct{}),
	}, nil
}

// candidate is what the scanner knows of one file.
type candidate struct {
	size    int64
	mtime   time.Time
	since   time.Time // when this size/mtime was first seen (settle runs from here)
	found   time.Time // when a scan first listed this size/mtime
	listed  time.Time // when a scan last listed this size/mtime
	retryAt time.Time // after a nack, a failed fetch, an incomplete read, a keep
	fails   int
	// rechecks counts reads of this version that its coarse mtime could
	// not prove final (unchanged); they back off.
	rechecks int
	// stored: JetStream took this version (its commit may have failed).
	stored bool
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
	seen map[string]*candidate
	// passed are the listed names that look meant as exchange messages
	// but are not named as 1C names them (passedOver), told once each.
	passed  map[string]bool
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
	sc := &scanner{seen: map[string]*candidate{}, passed: map[string]bool{}, busy: map[string]bool{}, results: make(chan takeResult, takeParallel), takes: takes}
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
	// passedOver tells, once while it stays, of a file passed over that
	// its sender may have meant for a pickup.
	passed := map[string]bool{}
	passedOver := func(name, why string) {
		if !sc.passed[name] {
			p.log.Info("file passed over: "+why, "name", name)
		}
		passed[name] = true
	}
	var ready []string
	held := map[string]bool{}
	for _, f := range files {
		name := MessageName(f.Name)
		if name != f.Name {
			held[f.Name] = true
			if p.holding(f.Name) {
				present[f.Name] = true
				continue // a commit is at it
			}
			// Left by a commit (the file changed, the delete failed, the
			// relay stopped): taken as the message it holds.
		} else if !IsMessageName(f.Name) {
			if PassedOver(f.Name) {
				passedOver(f.Name, "not named Message_<from>_<to>.xml or .zip as 1C names an exchange message")
			}
			continue
		}
		if why := Nobodys(name, p.o.IsNode); why != "" {
			// Whose it is cannot be told: taking it could take a message
			// delivered to the node's 1C (found by review: a name in
			// Windows-1251 on an FTP pickup left at utf-8), and leaving
			// it in silence stalls a node whose code 1C writes otherwise
			// (or a name read in the wrong encoding). Shown, left alone.
			present[f.Name] = true
			p.fileFailed(f.Name, fmt.Errorf("%s %s: %s: %s; left alone", p.o.Adapter, p.o.Node, p.src.Where(f.Name), why), false)
			continue
		}
		if ForAnotherNode(name, p.o.Node, p.o.IsNode) {
			// Another node's file, e.g. one delivered into a shared
			// folder; told when its sender is no node at all.
			if Stranded(name, p.o.IsNode) {
				passedOver(f.Name, "its sender is not a node of routing.yaml, so no pickup takes it")
			}
			continue
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
				// What a read of the version before found (not
				// complete and not changing) is old news (found by
				// review: shown while 1C wrote on).
				p.fileRead(f.Name)
			}
			since := now
			if p.o.TrustMTime && !f.ModTime.After(now) {
				// The last write was at mtime: the settle time runs
				// from there, not from when this scan happened to look.
				// A change came after the scan that listed the old
				// version, whatever a coarse mtime says. since keeps
				// now's monotonic reading (an mtime has none), so that
				// a step of the wall clock does not move it.
				since = now.Add(-now.Sub(f.ModTime))
				if floor := now.Add(-p.o.Settle); since.Before(floor) {
					since = floor
				}
				if c != nil && since.Before(c.listed) {
					since = c.listed
				}
			}
			c = &candidate{size: f.Size, mtime: f.ModTime, since: since, found: now, fails: fails}
			if prev := sc.seen[name]; name != f.Name && prev != nil && prev.stored && prev.size == f.Size {
				// A commit that failed left the file under its held
				// name: it keeps the backoff its commit set, rather
				// than being taken again at once (found by review).
				c.fails, c.retryAt, c.stored = prev.fails, prev.retryAt, true
			}
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
	p.heldMu.Lock()
	p.listedHeld = held
	p.heldMu.Unlock()
	sc.passed = passed
	for name := range sc.seen {
		if !present[name] && !sc.busy[name] {
			delete(sc.seen, name)
		}
	}
	p.forgetFiles(func(name string) bool { return present[name] || sc.busy[name] })
	sort.Slice(ready, func(i, j int) bool {
		a, b := sc.seen[ready[i]], sc.seen[ready[j]]
		if !a.mtime.Equal(b.mtime) {
			return a.mtime.Before(b.mtime)
		}
		return ready[i] < ready[j]
	})
	sc.waiting = false
	// One file of a message name at a time: a held file (HeldName) and
	// 1C's newer file of the name are one channel, the held one first
	// (found by review: taken side by side, a channel routed by name,
	// whose order is the stream's, could deliver the older after the
	// newer).
	taking := map[string]bool{}
	for name := range sc.busy {
		taking[MessageName(name)] = true
	}
	for _, name := range ready {
		if hc := sc.seen[HeldName(name)]; present[HeldName(name)] && (hc == nil || !hc.stored) {
			continue // after its held file is stored (its commit may still fail)
		}
		if taking[MessageName(name)] {
			continue
		}
		if len(sc.busy) >= takeParallel {
			sc.waiting = true
			break
		}
		taking[MessageName(name)] = true
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

// fingerprint identifies, for keep-memory, the version of a file that was
// taken: "size/mtime in Unix nanoseconds/sha256". An older relay wrote the
// first two only; parseFingerprint reads both.
func fingerprint(size int64, mtime time.Time, sum string) string {
	return strconv.FormatInt(size, 10) + "/" + strconv.FormatInt(mtime.UnixNano(), 10) + "/" + sum
}

// keptVersion is a fingerprint read back; sha256 is "" in an older one.
type keptVersion struct {
	size, mtime int64 // mtime in Unix nanoseconds
	sha256      string
}

// parseFingerprint reads a fingerprint; false for "" or one it does not know.
func parseFingerprint(fp string) (keptVersion, bool) {
	parts := strings.Split(fp, "/")
	if len(parts) != 2 && len(parts) != 3 {
		return keptVersion{}, false
	}
	var k keptVersion
	var err1, err2 error
	k.size, err1 = strconv.ParseInt(parts[0], 10, 64)
	k.mtime, err2 = strconv.ParseInt(parts[1], 10, 64)
	if len(parts) == 3 {
		k.sha256 = parts[2]
	}
	return k, err1 == nil && err2 == nil
}

// is reports whether k is the version c lists.
func (k keptVersion) is(c *candidate) bool {
	return k.size == c.size && k.mtime == c.mtime.UnixNano()
}

// coarse reports whether a listed mtime has no sub-second part: a file
// system with coarse times (FAT, ext3, some shares) or an FTP server (MDTM
// has seconds, LIST without MLSD minutes). There 1C's next message, written
// over the same name with the same size soon after the one before, may list
// exactly as that one did: only the content tells them apart.
func coarse(mtime time.Time) bool { return mtime.Nanosecond() == 0 }

// timeUnit is how far apart in time writes may be that give a file the
// same mtime: 0 for a fine mtime; for a coarse one, two seconds (FAT counts
// in twos), or a minute for an mtime on a whole minute (FTP LIST).
func timeUnit(mtime time.Time) time.Duration {
	switch {
	case !coarse(mtime):
		return 0
	case mtime.Second() != 0:
		return 2 * time.Second
	default:
		return time.Minute
	}
}

// final reports whether a read of c's version that started at t got the
// last content that version can have: a write after t would show another
// mtime. So it is for a fine mtime. The writes that give one coarse mtime
// fall within its time unit, and one of them came before the scan that
// first listed the version, so a read that starts a unit after that scan
// is final too, whatever the source's clock says; where the mtime is the
// relay's clock (TrustMTime), so is one that starts a unit after the mtime.
func (p *Pickup) final(c *candidate, t time.Time) bool {
	u := timeUnit(c.mtime)
	return u == 0 || !t.Before(c.found.Add(u)) || p.o.TrustMTime && c.mtime.Add(u).Before(t)
}

// unchanged schedules the next read of a version whose content is known
// (taken already with after: keep, or incomplete), read from t on: at
// until, since a listing shows any change; or, where the read was not
// final, sooner, as a same-size rewrite within the mtime's time unit would
// not show: after 2 s, 4 s ... (Backoff), and at the latest once a read is
// sure to be final.
func (p *Pickup) unchanged(c *candidate, t, until time.Time) {
	if !p.final(c, t) {
		at := p.now().Add(Backoff(c.rechecks + 1))
		if end := c.found.Add(timeUnit(c.mtime)); end.Before(at) {
			at = end
		}
		c.rechecks++
		if at.Before(until) {
			until = at
		}
	}
	c.retryAt = until
}

// later schedules the next look at c after a failure.
func (p *Pickup) later(c *candidate) {
	c.retryAt = p.now().Add(Backoff(c.fails))
	c.fails++
}

// take proves one file complete, emits it and waits for the verdict; c is
// left saying when to look at the file again.
func (p *Pickup) take(ctx context.Context, name string, c *candidate, out chan<- *message.Message) {
	where := p.src.Where(name)
	log := p.log.With("file", where)
	keep := p.o.After.Action == config.AfterKeep
	var keptSHA string // keep: the sha256 taken with this size and coarse mtime
	if keep {
		fp, err := p.o.Memory.Recall(ctx, where)
		if err != nil {
			// Shown as the node's trouble: no file is taken meanwhile
			// (found by review: relay status showed nothing).
			p.cannotRead(ctx, log, c, name, "cannot read pickup memory",
				fmt.Errorf("%s %s: read pickup memory for %s: %w", p.o.Adapter, p.o.Node, name, err))
			return
		}
		if k, ok := parseFingerprint(fp); ok && k.is(c) {
			switch {
			case !coarse(c.mtime):
				// Taken and stored by an earlier run: a newer file of
				// its name may go (found by review: a held file kept
				// under keep held 1C's next message for good).
				c.retryAt, c.stored = farFuture, true
				return
			case k.sha256 == "":
				// A coarse mtime cannot tell this version from the next
				// message of the same size; without a sha256 nothing can.
				// Taken again: the same message is dropped as a duplicate.
				log.Info("taken before by a relay that did not remember its sha256; taken again to be sure (a duplicate is dropped)")
			default:
				keptSHA = k.sha256
			}
		}
	}

	if lim := p.o.Limits.MaxSize; lim > 0 && c.size > lim {
		p.fileRead(name) // not read: what a read of a smaller version found is old news (found by review)
		if p.leftBefore(ctx, where, c) {
			log.Info("file larger than the size limit, recorded as a dead letter before: left in place", "bytes", c.size, "limit", lim)
			c.retryAt, c.stored = farFuture, true
			return
		}
		p.leaveTooLarge(ctx, log, name, where, c, lim, out)
		return
	}
	read := p.now()
	fetched, err := p.src.Fetch(ctx, File{Name: name, Size: c.size, ModTime: c.mtime})
	if err != nil {
		p.cannotRead(ctx, log, c, name, "cannot read the file", err)
		return
	}
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
			p.cannotRead(ctx, log, c, name, "cannot look at the file after reading it",
				fmt.Errorf("%s %s: look at %s after reading it: %w", p.o.Adapter, p.o.Node, name, err))
			return
		}
		changed = now.Size != c.size || !now.ModTime.Equal(c.mtime)
	}
	p.fileRead(name)
	if changed {
		p.settleAgain(log, c, fetched.Size)
		return
	}
	if keptSHA != "" {
		sum, err := p.contentSHA256(ctx, name, fetched)
		if err != nil {
			p.cannotRead(ctx, log, c, name, "cannot read the file", err)
			return
		}
		if sum == keptSHA {
			c.stored = true
			p.unchanged(c, read, farFuture)
			return
		}
		log.Info("file has the size and mtime of the one taken but another content: the node's next message")
	}

	msg, problem := NewMessage(p.o.Node, p.o.IsNode, where, MessageName(name), fetched, p.o.Limits, p.o.Passwords)
	if left := p.incompleteLeft(c); errors.Is(problem, exchange.ErrIncomplete) && left > 0 {
		// Read again once it changes, or at incomplete_timeout to be
		// dead-lettered: an unchanged file does not become complete.
		// Shown meanwhile: its sender's 1C may have died writing it
		// (found walking through the quick start: nothing said so).
		until := read.Add(left)
		log.Debug("file not complete yet; waiting", "reason", problem, "until", until)
		p.fileFailed(name, fmt.Errorf("%s %s: %s is not complete and does not change (%w): waiting for its writer until %s, then a dead letter",
			p.o.Adapter, p.o.Node, name, problem, until.Format(time.DateTime)), false)
		p.unchanged(c, read, until)
		return
	}
	sum := msg.Metadata.Get(exchange.MetaSHA256)
	if fetched.Copy && !p.final(c, read) {
		// Within the mtime's time unit a same-size rewrite does not show
		// in size and mtime (a whole-minute LIST time): only a second
		// copy that reads the same proves the first is one message
		// (found by review: a copy of No 7's head and No 8's tail was
		// handed over).
		var again bool
		sum, again, err = p.readsAgainOtherwise(ctx, File{Name: name, Size: c.size, ModTime: c.mtime}, fetched, sum)
		if err != nil {
			p.cannotRead(ctx, log, c, name, "cannot read the file again", err)
			return
		}
		if again {
			p.settleAgain(log, c, fetched.Size)
			return
		}
	}
	if sum == "" {
		// A dead letter has no sha256 of its own; keep remembers one, and
		// the commit may compare the file with it (also after a rename
		// that stamped a new mtime: found by review).
		if sum, err = p.contentSHA256(ctx, name, fetched); err != nil {
			p.cannotRead(ctx, log, c, name, "cannot read the file", err)
			return
		}
	}
	switch Hand(ctx, p.closing, out, msg) {
	case Acked:
		c.stored = true
		if !p.commit(ctx, log, name, where, c, read, sum) {
			// Taking it again at once would only store it again (a
			// duplicate) in a loop as fast as the file reads.
			p.later(c)
			return
		}
		c.fails = 0
	case Nacked:
		p.later(c)
		log.Warn("pipeline refused the file; it stays and is retried", "retry_in", c.retryAt.Sub(p.now()).Round(time.Second))
	}
}

// cannotRead records, unless the pickup is stopping, that name could not
// be read (what says which step failed), and schedules its next try.
func (p *Pickup) cannotRead(ctx context.Context, log *slog.Logger, c *candidate, name, what string, err error) {
	if ctx.Err() == nil {
		p.fileFailed(name, err, false)
		log.Warn(what+"; will retry", "err", err)
	}
	p.later(c)
}

// settleAgain makes c, found changed while it was read (read bytes of
// it), wait for its writer to finish again.
func (p *Pickup) settleAgain(log *slog.Logger, c *candidate, read int64) {
	log.Debug("file changed while it was read; waiting", "listed", c.size, "read", read)
	c.size, c.since = -1, p.now()
	c.retryAt = p.now().Add(p.o.Settle)
}

// readsAgainOtherwise copies file once more and reports whether that copy
// differs from f, the first one, whose sha256 is sum ("": not known yet,
// then computed here and returned for the commit to compare with).
func (p *Pickup) readsAgainOtherwise(ctx context.Context, file File, f Fetched, sum string) (string, bool, error) {
	again, err := p.src.Fetch(ctx, file)
	if err != nil {
		return sum, false, err
	}
	defer again.Release()
	if again.Size != f.Size {
		return sum, true, nil
	}
	if sum == "" {
		if sum, err = p.contentSHA256(ctx, file.Name, f); err != nil {
			return "", false, err
		}
	}
	second, err := p.contentSHA256(ctx, file.Name, again)
	return sum, sum != second, err
}

// contentSHA256 is the hex sha256 of the fetched content of name, streamed.
func (p *Pickup) contentSHA256(ctx context.Context, name string, f Fetched) (string, error) {
	h := sha256.New()
	if _, err := io.CopyBuffer(h, CtxReader{Ctx: ctx, R: io.NewSectionReader(f.File, 0, f.Size)}, make([]byte, 256<<10)); err != nil {
		return "", fmt.Errorf("%s %s: read %s: %w", p.o.Adapter, p.o.Node, name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// leaveTooLarge records a file over the size limit as a dead letter without
// its bytes (none are read: the pipeline could not keep them) and leaves the
// file where it is, since committing it would delete or move the only copy.
// It is looked at again once it changes.
func (p *Pickup) leaveTooLarge(ctx context.Context, log *slog.Logger, name, where string, c *candidate, lim int64, out chan<- *message.Message) {
	problem := fmt.Errorf("%w: %d bytes, larger than the %d-byte limit; the file is left in place", exchange.ErrTooLarge, c.size, lim)
	msg := fileMessage(p.o.Node, where, MessageName(name))
	msg.Metadata.Set(exchange.MetaProblem, problem.Error())
	msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(c.size, 10))
	exchange.SetBody(msg, func(context.Context) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("")), nil })
	switch Hand(ctx, p.closing, out, msg) {
	case Acked:
		log.Error("file larger than the size limit: dead letter recorded, the file stays", "bytes", c.size, "limit", lim)
		c.retryAt = farFuture
		c.fails = 0
		c.stored = true // handed over: a newer file of its name may go (found by review)
		if p.o.Memory != nil {
			if err := p.o.Memory.Remember(ctx, tooLargeKey(where), fingerprint(c.size, c.mtime, "")); err != nil {
				log.Warn("file left for its size not remembered: a restart records it as a dead letter again", "err", err)
			}
		}
	case Nacked:
		p.later(c)
	}
}

// PassedOver says a name a pickup passes over looks meant as an exchange
// message (message_ЦО_ОП.xml, Message_ЦО_ОП.xml.txt): it is told once in
// the log, since the file waits there in silence otherwise (found walking
// through the quick start). Other files (a readme, a temp file) are
// passed over without a word.
func PassedOver(name string) bool {
	return len(name) >= len("message_") && strings.EqualFold(name[:len("message_")], "message_")
}

// tooLargeKey is the pickup memory's key for a file left in place for its
// size: remembered with its size and mtime, it is not recorded as a dead
// letter again after a restart (each restart made one more, found by
// review), until it changes.
func tooLargeKey(where string) string { return "too-large:" + where }

// leftBefore says whether this version of c, too large, was recorded as a
// dead letter and left in place before (by this relay before a restart, or
// by a replica). A memory that cannot be read says no: a second letter is
// better than none.
func (p *Pickup) leftBefore(ctx context.Context, where string, c *candidate) bool {
	if p.o.Memory == nil {
		return false
	}
	fp, err := p.o.Memory.Recall(ctx, tooLargeKey(where))
	if err != nil || fp == "" {
		return false
	}
	k, ok := parseFingerprint(fp)
	return ok && k.is(c)
}

// Passwords gives the archive passwords to try, in order, on a
// password-protected zip of the channel from → to (config.ZipPasswords).
type Passwords func(from, to string) []string

// NewMessage is the pipeline message for one fetched file of node, found
// at where under name: its header in the metadata when name and content
// make a valid message, else the problem, also set as MetaProblem so that
// the pipeline dead-letters it. pw (may be nil) reads a password-protected
// zip; isNode (nil: any code) tells the node codes, to read a name whose
// codes hold '_' (exchange.Name.ReadBy). The body reads f, which must stay
// open until the pipeline answers.
func NewMessage(node string, isNode func(string) bool, where, name string, f Fetched, lim exchange.Limits, pw Passwords) (*message.Message, error) {
	msg := fileMessage(node, where, name)
	info, problem := inspect(node, isNode, name, f, lim, pw)
	if problem != nil {
		msg.Metadata.Set(exchange.MetaProblem, problem.Error())
		msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(f.Size, 10))
		if errors.Is(problem, exchange.ErrNameMismatch) && info.Header.From != "" {
			// The header read: its dead letter shows plan and numbers
			// (found walking through the quick start: only the name's
			// contradiction was told).
			exchange.SetHeader(msg, info.Header)
		}
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

// inspect checks the whole content of node's file; the name must agree
// with the header. A password-protected zip is read with the channel's
// passwords, or routed by its name when there are none (exchange.InspectFile).
func inspect(node string, isNode func(string) bool, name string, f Fetched, lim exchange.Limits, pw Passwords) (exchange.Info, error) {
	n, err := exchange.ParseName(name)
	if err != nil {
		return exchange.Info{}, err
	}
	// A name whose codes hold '_' is read as the node's pickup took it.
	read := n.ReadBy(node, isNode)
	var passwords []string
	if pw != nil {
		passwords = pw(read.From, read.To)
	}
	info, err := exchange.InspectFile(f.File, f.Size, lim, n, read.Sealed(), passwords)
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

// commit applies `after` once JetStream holds the message read from t on,
// whose sha256 is sum. A file that changed since it was read is a new
// message from the node: it is left in place. It returns false when the
// file stays because the commit failed.
func (p *Pickup) commit(ctx context.Context, log *slog.Logger, name, where string, c *candidate, t time.Time, sum string) bool {
	// delete and move: the file is taken out of its name first, so that
	// what is looked at is what goes (HeldName); one held already (left by
	// an earlier commit) is looked at where it is, and so is one whose
	// held name is taken (a held file not taken yet: never replaced), or
	// when the source cannot rename (an FTP account without the right).
	at := name
	if held := HeldName(name); p.o.After.Action != config.AfterKeep && MessageName(name) == name && !p.listed(held) {
		p.hold(held, true)
		defer p.hold(held, false)
		if err := p.src.Rename(ctx, name, held); err == nil {
			at = held
		} else {
			log.Debug("cannot hold the file under another name for its commit; looked at in place", "err", err)
		}
	}
	stored, err := p.stillStored(ctx, at, at != name, c, t, sum)
	if err != nil {
		if ctx.Err() == nil {
			p.fileFailed(name, err, true)
			log.Warn("cannot look at the file before commit; it may be taken again and dropped as a duplicate", "err", err)
		}
		return false
	}
	p.fileLooked(name)
	if !stored {
		// Under its held name it is taken as the message it holds.
		log.Info("file changed after it was taken; leaving the new version for the next scan")
		return true
	}
	switch p.o.After.Action {
	case config.AfterDelete:
		err = p.src.Remove(ctx, at)
	case config.AfterMove:
		err = p.src.Move(ctx, at, MessageName(name), p.o.After.Folder)
	case config.AfterKeep:
		if err = p.o.Memory.Remember(ctx, where, fingerprint(c.size, c.mtime, sum)); err == nil {
			p.unchanged(c, t, farFuture)
		}
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

// hold marks the held name of a commit in progress (on), or done: the
// scan takes only held files no commit is at.
func (p *Pickup) hold(held string, on bool) {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	if on {
		p.held[held] = true
	} else {
		delete(p.held, held)
	}
}

func (p *Pickup) holding(held string) bool {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	return p.held[held]
}

// listed says the last listing held the file held.
func (p *Pickup) listed(held string) bool {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	return p.listedHeld[held]
}

// stillStored reports whether name is still the version of c read from t
// on, whose sha256 is sum. Size and mtime tell, unless a same-size rewrite
// within a coarse mtime's time unit could have come after the read began
// (final): then the file is read again and its sha256 compared. keep needs
// no such read: it remembers sum, and later reads compare it.
func (p *Pickup) stillStored(ctx context.Context, name string, renamed bool, c *candidate, t time.Time, sum string) (bool, error) {
	now, err := p.src.Stat(ctx, name)
	if err != nil {
		return false, fmt.Errorf("%s %s: look at %s before its commit: %w", p.o.Adapter, p.o.Node, name, err)
	}
	// A server whose rename is a copy (FTP on object storage) gives the
	// renamed file a new mtime: its content tells then (found by review:
	// every commit found the file changed).
	moved := renamed && now.Size == c.size && !now.ModTime.Equal(c.mtime)
	if now.Size != c.size || !now.ModTime.Equal(c.mtime) && !moved {
		return false, nil
	}
	if !moved && (p.o.After.Action == config.AfterKeep || p.final(c, t)) {
		return true, nil
	}
	f, err := p.src.Fetch(ctx, now)
	if err != nil {
		return false, fmt.Errorf("%s %s: read %s again before its commit: %w", p.o.Adapter, p.o.Node, name, err)
	}
	defer f.Release()
	if f.Size != c.size {
		return false, nil
	}
	got, err := p.contentSHA256(ctx, name, f)
	return got == sum, err
}

// incompleteLeft is how much longer the unchanged version c waits to
// become complete before it is a dead letter: from when this relay first
// saw it so. Not from its mtime, which would survive a restart: a file
// server whose clock is behind relay's would make a file its writer only
// paused a dead letter at once, and its commit would take it from under
// the writer.
func (p *Pickup) incompleteLeft(c *candidate) time.Duration {
	return p.o.IncompleteTimeout - p.now().Sub(c.since)
}

// fileTrouble is why one file cannot be taken, and since when.
type fileTrouble struct {
	msg string
	at  time.Time
	// commit: the look before its commit failed, which a read of the
	// file does not clear (each take reads it before it gets there).
	commit bool
}

// LastError is the pickup's current trouble for `relay status`: the source's
// (cannot list), else a file that cannot be taken (the oldest such trouble,
// with how many more files have one), else a commit that failed last.
func (p *Pickup) LastError() (string, time.Time) {
	if msg, at := p.Last.LastError(); msg != "" {
		return msg, at
	}
	if msg, at := p.filesTrouble(); msg != "" {
		return msg, at
	}
	return p.commitTrouble.LastError()
}

// filesTrouble is the oldest file trouble (by name among equally old ones)
// and how many more files have one, "" when none has.
func (p *Pickup) filesTrouble() (string, time.Time) {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	var name string
	var first fileTrouble
	for n, t := range p.files {
		if name == "" || t.at.Before(first.at) || t.at.Equal(first.at) && n < name {
			name, first = n, t
		}
	}
	switch more := len(p.files) - 1; {
	case more < 0:
		return "", time.Time{}
	case more == 0:
		return first.msg, first.at
	case more == 1:
		return first.msg + " (and 1 more file)", first.at
	default:
		return fmt.Sprintf("%s (and %d more files)", first.msg, more), first.at
	}
}

// fileFailed records why the file name cannot be taken: it cannot be read
// (commit false), or looked at before its commit (commit true). The same
// trouble again keeps its first time.
func (p *Pickup) fileFailed(name string, err error, commit bool) {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	if t, ok := p.files[name]; ok && t.msg == err.Error() && t.commit == commit {
		return
	}
	p.files[name] = fileTrouble{msg: err.Error(), at: p.now(), commit: commit}
}

// fileRead clears the read trouble of the file name: it was read.
func (p *Pickup) fileRead(name string) {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	if t, ok := p.files[name]; ok && !t.commit {
		delete(p.files, name)
	}
}

// fileLooked clears any trouble of the file name: it was read, and looked
// at before its commit.
func (p *Pickup) fileLooked(name string) {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	delete(p.files, name)
}

// forgetFiles drops the trouble of files that left the folder: those
// for which present is false.
func (p *Pickup) forgetFiles(present func(name string) bool) {
	p.filesMu.Lock()
	defer p.filesMu.Unlock()
	for name := range p.files {
		if !present(name) {
			delete(p.files, name)
		}
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
