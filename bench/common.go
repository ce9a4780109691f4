package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// benchPlan is the exchange plan of every generated message.
const benchPlan = "Bench"

// progress writes a scenario's progress lines, each after prefix.
type progress struct {
	Verbose io.Writer // stderr, or nil for no progress lines (-q)
	prefix  string
}

func (p progress) logf(format string, args ...any) {
	if p.Verbose != nil {
		fmt.Fprintf(p.Verbose, p.prefix+format+"\n", args...)
	}
}

// with is p with prefix added to its lines' prefix.
func (p progress) with(prefix string) progress {
	p.prefix += prefix
	return p
}

// sent is one generated message: its bytes and their sha256.
type sent struct {
	no   uint64
	data []byte
	sha  string
}

// stamps are when one message was written to out/, gone from out/ (taken)
// and seen in in/, per side run; zero when not observed.
type stamps struct {
	written, taken, seen time.Time
}

// channel is one bench channel (benchPlan, from → to) with the messages its
// producer writes, MessageNo 1..len(msgs).
type channel struct {
	from, to string
	msgs     []sent
	times    []stamps // reset before each side's run
}

func (c *channel) name() string { return exchange.FileName(c.from, c.to, exchange.FormatXML) }
func (c *channel) key() string  { return c.from + "\x00" + c.to }
func (c *channel) final() uint64 {
	return uint64(len(c.msgs))
}

// workload is the set of files both the relay and the baseline move.
type workload struct {
	nodes    []string
	channels []*channel
	messages int
	bytes    int64 // sum of file sizes
}

// nodesFor is the smallest node count whose ordered pairs cover n channels.
func nodesFor(channels int) int {
	n := 2
	for n*(n-1) < channels {
		n++
	}
	return n
}

// newWorkload generates every message in memory before any clock starts, so
// neither side pays for generation. Channels are spread evenly over the
// nodes (pairs taken by rising offset), messages over the channels.
func newWorkload(messages, channels int, bodySize int64) (*workload, error) {
	if channels < 1 || messages < channels {
		return nil, fmt.Errorf("need messages (%d) >= channels (%d) >= 1", messages, channels)
	}
	nn := nodesFor(channels)
	w := &workload{messages: messages}
	for i := range nn {
		w.nodes = append(w.nodes, fmt.Sprintf("N%02d", i+1))
	}
	for d := 1; d < nn && len(w.channels) < channels; d++ {
		for i := 0; i < nn && len(w.channels) < channels; i++ {
			w.channels = append(w.channels, &channel{from: w.nodes[i], to: w.nodes[(i+d)%nn]})
		}
	}
	return w, w.generate(bodySize)
}

// generate spreads w.messages evenly over w.channels (the first ones get
// one more when it does not divide) and makes each message in memory:
// MessageNo 1..n per channel, ReceivedNo one less, bodySize bytes of body.
func (w *workload) generate(bodySize int64) error {
	per, extra := w.messages/len(w.channels), w.messages%len(w.channels)
	var buf bytes.Buffer
	for ci, c := range w.channels {
		count := per
		if ci < extra {
			count++
		}
		for k := 1; k <= count; k++ {
			buf.Reset()
			h := exchange.Header{ExchangePlan: benchPlan, From: c.from, To: c.to, MessageNo: uint64(k), ReceivedNo: uint64(k - 1)}
			if err := exchangetest.WriteXML(&buf, h, bodySize); err != nil {
				return err
			}
			data := bytes.Clone(buf.Bytes())
			sum := sha256.Sum256(data)
			c.msgs = append(c.msgs, sent{no: uint64(k), data: data, sha: hex.EncodeToString(sum[:])})
			w.bytes += int64(len(data))
		}
	}
	return nil
}

// tempSite makes a temp folder (pattern) under dir with <node>/out and
// <node>/in for every node; the caller removes it with removeTemp.
func tempSite(dir, pattern string, nodes []string) (string, error) {
	root, err := tempDir(dir, pattern)
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		for _, d := range []string{"out", "in"} {
			if err := os.MkdirAll(filepath.Join(root, n, d), 0o755); err != nil {
				removeTemp(root)
				return "", err
			}
		}
	}
	return root, nil
}

// site is where a scenario's nodes keep their folders: channel c's files
// are written into out(c) and delivered into in(c), both below root.
type site struct {
	root    string
	out, in func(c *channel) string
}

// dirSite is the layout of tempSite: <root>/<from>/out → <root>/<to>/in.
func dirSite(root string) site {
	return site{
		root: root,
		out:  func(c *channel) string { return filepath.Join(c.from, "out") },
		in:   func(c *channel) string { return filepath.Join(c.to, "in") },
	}
}

func (s site) outPath(c *channel) string { return filepath.Join(s.root, s.out(c), c.name()) }
func (s site) inPath(c *channel) string  { return filepath.Join(s.root, s.in(c), c.name()) }

// folders lists, once each, the folders which(c) names for w's channels.
func (s site) folders(w *workload, which func(c *channel) string) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, c := range w.channels {
		if d := filepath.Join(s.root, which(c)); !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// isMessageName matches Message_*.xml (what a 1C node reads).
func isMessageName(base string) bool {
	return strings.HasPrefix(base, "Message_") && strings.HasSuffix(strings.ToLower(base), ".xml")
}

// newWatcher makes one fsnotify watcher over dirs.
func newWatcher(dirs ...string) (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return nil, err
		}
	}
	return w, nil
}

// eachEvent calls onEvent for every event of w, and onTick every tick when
// tick > 0, until ctx ends or w is closed.
func eachEvent(ctx context.Context, w *fsnotify.Watcher, tick time.Duration, onEvent func(fsnotify.Event), onTick func()) {
	var ticks <-chan time.Time // nil: never
	if tick > 0 {
		t := time.NewTicker(tick)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			onEvent(ev)
		case _, ok := <-w.Errors:
			if !ok {
				return
			}
		case <-ticks:
			onTick()
		}
	}
}

// tracker plays every receiving node: it watches the delivery folders of a
// site and, each time a message file appears (rename of the deliverer's
// temp file), reads it, checks it is in its channel's place, that its
// sha256 is what was sent for that (channel, MessageNo) (every version read
// is hashed, a number read before included) and that the inbox did not go
// back to a lower number than one read from it before (an inbox never goes
// back, DESIGN §6.3; in latest mode numbers may be skipped, never
// undone). The clock stops when every channel's delivered file holds the
// channel's final MessageNo.
//
// Versions overwritten by the next one before the tracker read them are not
// seen here. So that no message can go missing unnoticed, every number of
// every channel must be accounted for: seen by the tracker, or reported by
// the side's writer, which the bench controls on the baselines (writing:
// each file it puts into an inbox, kept and checked only after the clock).
// A side that accounts for its messages another way (the relay: its
// channel state) says so with numbersCheckedElsewhere. After the clock,
// verify checks the reported writes' bytes, that every (channel, No) was
// seen or written, and re-reads every inbox.
type tracker struct {
	site   site
	chans  map[string]*chanTrack // by channel key
	byPath map[string]*chanTrack // by delivered file's path
	watch  *fsnotify.Watcher

	readMu sync.Mutex // one inbox read (and its check) at a time, in order

	mu        sync.Mutex // also guards the channels' stamps
	needAll   bool       // every (channel, No) must be seen or reported by writing
	remaining int
	observed  int // distinct (channel, No) seen with the right sha256
	corrupt   []string
	doneAt    time.Time
	done      chan struct{}
}

type chanTrack struct {
	ch       *channel
	seen     []bool   // No read from the inbox with the right sha256
	nseen    int      // how many are true in seen
	last     uint64   // highest No read from the inbox so far
	writes   [][]byte // what the side's writer reported putting into the inbox, in order
	complete bool
}

// startTracker resets the stamps of w's channels and tracks s's delivery
// folders until ctx ends; close stops its watcher. Every (channel, No) must
// be seen or reported by writing unless numbersCheckedElsewhere is called.
func startTracker(ctx context.Context, s site, w *workload) (*tracker, error) {
	t := &tracker{site: s, chans: map[string]*chanTrack{}, byPath: map[string]*chanTrack{}, needAll: true, remaining: len(w.channels), done: make(chan struct{})}
	for _, c := range w.channels {
		c.times = make([]stamps, len(c.msgs))
		ct := &chanTrack{ch: c, seen: make([]bool, len(c.msgs)+1)}
		t.chans[c.key()] = ct
		t.byPath[s.inPath(c)] = ct
	}
	var err error
	if t.watch, err = newWatcher(s.folders(w, s.in)...); err != nil {
		return nil, err
	}
	go t.run(ctx)
	return t, nil
}

func (t *tracker) close() { t.watch.Close() }

// numbersCheckedElsewhere lifts the rule that every (channel, No) be seen
// or reported by writing: the side proves its messages were written
// another way (the relay: its channel state, checkStates).
func (t *tracker) numbersCheckedElsewhere() {
	t.mu.Lock()
	t.needAll = false
	t.mu.Unlock()
}

// writing is the side's writer reporting that data goes to path now: it is
// called just before the rename that puts it there (a failed rename fails
// the run through the writer's error, so nothing is counted that was not
// written). It only keeps data; verify checks it, outside the clock.
func (t *tracker) writing(path string, data []byte) {
	ct := t.byPath[path]
	t.mu.Lock()
	defer t.mu.Unlock()
	if ct == nil {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: written, but no channel delivers there", path))
		return
	}
	ct.writes = append(ct.writes, data)
}

// observe reads one delivered file.
func (t *tracker) observe(path string) {
	t.readMu.Lock()
	defer t.readMu.Unlock()
	data, err := os.ReadFile(path)
	if err != nil {
		return // overwritten by a rename in between, or not there (yet)
	}
	t.check(path, data, time.Now())
}

// check checks data, read from path at at, and returns its header's
// MessageNo (0 when it was no message of the workload).
func (t *tracker) check(path string, data []byte, at time.Time) uint64 {
	h, err := exchange.ReadHeader(bytes.NewReader(data), exchange.DefaultLimits())
	sum := sha256.Sum256(data)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: unreadable header: %v", path, err))
		return 0
	}
	ct := t.chans[h.From+"\x00"+h.To]
	switch {
	case ct == nil || h.ExchangePlan != benchPlan:
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: unexpected message %s %s→%s", path, h.ExchangePlan, h.From, h.To))
		return 0
	case path != t.site.inPath(ct.ch):
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: message %s→%s delivered to the wrong place", path, h.From, h.To))
		return 0
	case h.MessageNo < 1 || h.MessageNo > ct.ch.final():
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: MessageNo %d was never sent", path, h.MessageNo))
		return 0
	}
	if h.MessageNo < ct.last {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: the inbox went back from No %d to No %d", path, ct.last, h.MessageNo))
	}
	ct.last = max(ct.last, h.MessageNo)
	if got, want := hex.EncodeToString(sum[:]), ct.ch.msgs[h.MessageNo-1].sha; got != want {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: No %d has sha256 %s, sent %s", path, h.MessageNo, got, want))
		return h.MessageNo
	}
	if ct.seen[h.MessageNo] {
		return h.MessageNo // read before: checked again, counted once
	}
	ct.ch.times[h.MessageNo-1].seen = at
	ct.seen[h.MessageNo] = true
	ct.nseen++
	t.observed++
	if h.MessageNo == ct.ch.final() && !ct.complete {
		ct.complete = true
		t.remaining--
		if t.remaining == 0 {
			t.doneAt = at
			close(t.done)
		}
	}
	return h.MessageNo
}

// run watches the delivery folders until ctx ends. A slow rescan of the
// channels not yet complete covers events fsnotify might drop.
func (t *tracker) run(ctx context.Context) {
	eachEvent(ctx, t.watch, time.Second, func(ev fsnotify.Event) {
		if ev.Has(fsnotify.Create) && isMessageName(filepath.Base(ev.Name)) {
			t.observe(ev.Name)
		}
	}, func() {
		t.mu.Lock()
		var paths []string
		for _, ct := range t.chans {
			if !ct.complete {
				paths = append(paths, t.site.inPath(ct.ch))
			}
		}
		t.mu.Unlock()
		for _, p := range paths {
			t.observe(p)
		}
	})
}

// seen is the number of distinct (channel, No) seen with the right sha256.
func (t *tracker) seen() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.observed
}

// problems returns what the tracker found wrong: corrupt or misplaced
// versions, an inbox that went back, channels whose final message was not
// seen and, unless numbersCheckedElsewhere, channels where neither all
// numbers were seen nor as many writes reported as messages were sent
// (verify then checks the writes number by number).
func (t *tracker) problems() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.corrupt...)
	for _, ct := range t.chans {
		if !ct.complete {
			out = append(out, fmt.Sprintf("%s→%s: final No %d never seen in %s", ct.ch.from, ct.ch.to, ct.ch.final(), filepath.ToSlash(t.site.in(ct.ch))))
		}
		if t.needAll && ct.nseen < len(ct.ch.msgs) && len(ct.writes) < len(ct.ch.msgs) {
			out = append(out, fmt.Sprintf("%s→%s: %d of %d messages seen in %s, %d writes reported", ct.ch.from, ct.ch.to, ct.nseen, len(ct.ch.msgs), filepath.ToSlash(t.site.in(ct.ch)), len(ct.writes)))
		}
	}
	sort.Strings(out)
	return slices.Compact(out) // a version read twice (event and rescan) is reported once
}

// verify is the check after the clock (untimed). It checks the bytes of
// every write reported (header and sha256 against what was sent for that
// number) and, unless numbersCheckedElsewhere, that every (channel, No)
// was seen or written; then it re-reads every inbox, which must hold its
// channel's final message with the right sha256 (and, as every read, not a
// lower number than one read before). written is the number of distinct
// (channel, No) seen or written.
func (t *tracker) verify() (written int, err error) {
	t.mu.Lock()
	needAll := t.needAll
	chans := make([]*chanTrack, 0, len(t.chans))
	for _, ct := range t.chans {
		chans = append(chans, ct)
	}
	t.mu.Unlock()
	sort.Slice(chans, func(i, j int) bool { return chans[i].ch.key() < chans[j].ch.key() })
	var bad []string
	for _, ct := range chans {
		c := ct.ch
		t.mu.Lock()
		writes := ct.writes
		got := slices.Clone(ct.seen)
		written += ct.nseen
		t.mu.Unlock()
		for i, data := range writes {
			h, err := exchange.ReadHeader(bytes.NewReader(data), exchange.DefaultLimits())
			sum := sha256.Sum256(data)
			switch {
			case err != nil:
				bad = append(bad, fmt.Sprintf("%s→%s: write %d: unreadable header: %v", c.from, c.to, i+1, err))
			case h.ExchangePlan != benchPlan || h.From != c.from || h.To != c.to:
				bad = append(bad, fmt.Sprintf("%s→%s: write %d is a message %s %s→%s", c.from, c.to, i+1, h.ExchangePlan, h.From, h.To))
			case h.MessageNo < 1 || h.MessageNo > c.final():
				bad = append(bad, fmt.Sprintf("%s→%s: write %d: MessageNo %d was never sent", c.from, c.to, i+1, h.MessageNo))
			case hex.EncodeToString(sum[:]) != c.msgs[h.MessageNo-1].sha:
				bad = append(bad, fmt.Sprintf("%s→%s: write %d: No %d with the wrong sha256", c.from, c.to, i+1, h.MessageNo))
			default:
				if !got[h.MessageNo] {
					got[h.MessageNo] = true
					written++
				}
			}
		}
		if needAll {
			var missing []string
			for no := uint64(1); no <= c.final(); no++ {
				if !got[no] {
					missing = append(missing, strconv.FormatUint(no, 10))
				}
			}
			if len(missing) > 10 {
				missing = append(missing[:10:10], fmt.Sprintf("... (%d in all)", len(missing)))
			}
			if len(missing) > 0 {
				bad = append(bad, fmt.Sprintf("%s→%s: No %s neither seen in nor reported written to %s", c.from, c.to, strings.Join(missing, ", "), filepath.ToSlash(t.site.in(c))))
			}
		}
		path := t.site.inPath(c)
		t.readMu.Lock()
		data, err := os.ReadFile(path)
		no := uint64(0)
		if err == nil {
			no = t.check(path, data, time.Now())
		}
		t.readMu.Unlock()
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s→%s: after the run: %v", c.from, c.to, err))
		case no != c.final():
			bad = append(bad, fmt.Sprintf("%s→%s: after the run %s holds No %d, not the final No %d", c.from, c.to, filepath.ToSlash(t.site.in(c)), no, c.final()))
		}
	}
	// What check found in the re-read (a wrong sha256, an inbox gone back)
	// and anything else the tracker saw since the clock stopped.
	bad = append(bad, t.problems()...)
	if len(bad) > 0 {
		return written, errors.New(firstFew(bad))
	}
	return written, nil
}

// wait blocks until the tracker saw every channel's final message (then it
// returns what it found wrong, if anything), prodErr or sideErr yields an
// error (a closed one is done; a nil one never yields), the timeout passes,
// or ctx ends.
func (t *tracker) wait(ctx context.Context, timeout time.Duration, prodErr, sideErr <-chan error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-t.done:
			if p := t.problems(); len(p) > 0 {
				return errors.New(strings.Join(p, "; "))
			}
			return nil
		case err, ok := <-prodErr:
			if ok && err != nil {
				return err
			}
			prodErr = nil // all producers finished; deliveries may still be on their way
		case err, ok := <-sideErr:
			if ok && err != nil {
				return err
			}
			sideErr = nil
		case <-deadline.C:
			return fmt.Errorf("timed out after %s: %s", timeout, firstFew(t.problems()))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// firstFew joins the first five of list, and says how many more there are.
func firstFew(list []string) string {
	if len(list) > 5 {
		list = append(list[:5:5], fmt.Sprintf("... %d more", len(list)-5))
	}
	return strings.Join(list, "; ")
}

// sideRun is one side's run of a many-message scenario on a site whose
// pickup deletes the files it took: the producers, the tracker on the
// delivery folders and the taken signals on the pickup folders.
type sideRun struct {
	ctx    context.Context // the run's: ends with cancel or stop
	cancel context.CancelFunc
	site   site
	w      *workload
	tr     *tracker
	sig    *takenSignals
}

// startSide starts watching a side's run of w on s. The caller ends it
// with stop.
func startSide(ctx context.Context, s site, w *workload) (*sideRun, error) {
	r := &sideRun{site: s, w: w}
	r.ctx, r.cancel = context.WithCancel(ctx)
	var err error
	if r.tr, err = startTracker(r.ctx, s, w); err != nil {
		r.cancel()
		return nil, err
	}
	if r.sig, err = startTakenSignals(r.ctx, s, w); err != nil {
		r.tr.close()
		r.cancel()
		return nil, err
	}
	return r, nil
}

// produce starts the producers, each putting its files with write and
// waiting until the pickup deleted them; see producer.run.
func (r *sideRun) produce(write func(path string, data []byte) error) <-chan error {
	return producer{r.site, write, r.sig.gone}.run(r.ctx, r.w, &r.tr.mu)
}

// stop closes the watchers and ends the run's context.
func (r *sideRun) stop() {
	r.sig.close()
	r.tr.close()
	r.cancel()
}

// takenSignals tells a producer that its file left the pickup folder (the
// pickup or the baseline deleted it). A signal only wakes the producer; it
// then checks the file is really gone, so a stale signal cannot make it
// write too early.
type takenSignals struct {
	sig   map[string]chan struct{} // by full path
	watch *fsnotify.Watcher
}

// startTakenSignals watches s's pickup folders until ctx ends; close stops
// its watcher.
func startTakenSignals(ctx context.Context, s site, w *workload) (*takenSignals, error) {
	ts := &takenSignals{sig: map[string]chan struct{}{}}
	for _, c := range w.channels {
		ts.sig[s.outPath(c)] = make(chan struct{}, 1)
	}
	var err error
	if ts.watch, err = newWatcher(s.folders(w, s.out)...); err != nil {
		return nil, err
	}
	go eachEvent(ctx, ts.watch, 0, func(ev fsnotify.Event) {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			if ch := ts.sig[ev.Name]; ch != nil {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}, nil)
	return ts, nil
}

func (s *takenSignals) close() { s.watch.Close() }

// gone is a producer's taken: it waits until path no longer exists.
func (s *takenSignals) gone(ctx context.Context, path string, _ *channel) error {
	ch := s.sig[path]
	t := time.NewTimer(250 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		select {
		case <-ch:
		case <-t.C:
			t.Reset(250 * time.Millisecond)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// producer plays the sending nodes, one goroutine per channel, as a 1C
// node does: it writes message n+1 only once message n has been taken.
type producer struct {
	site  site
	write func(path string, data []byte) error                     // puts one message at path
	taken func(ctx context.Context, path string, c *channel) error // blocks until the file at path was taken
}

// run starts the producers; the channel yields the first error, or closes
// when every message was written and taken. mu guards the stamps.
func (p producer) run(ctx context.Context, w *workload, mu *sync.Mutex) <-chan error {
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for _, c := range w.channels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := p.site.outPath(c)
			for i, m := range c.msgs {
				mu.Lock()
				c.times[i].written = time.Now()
				mu.Unlock()
				if err := p.write(path, m.data); err != nil {
					sendErr(errc, fmt.Errorf("producer %s→%s: %w", c.from, c.to, err))
					return
				}
				if err := p.taken(ctx, path, c); err != nil {
					if ctx.Err() == nil {
						sendErr(errc, fmt.Errorf("producer %s→%s No %d: %w", c.from, c.to, m.no, err))
					}
					return
				}
				mu.Lock()
				c.times[i].taken = time.Now()
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(errc) }()
	return errc
}

// sendErr hands err over unless an error is waiting already.
func sendErr(c chan<- error, err error) {
	select {
	case c <- err:
	default:
	}
}

// writeLike1C writes data straight to the final name (no temp file).
func writeLike1C(path string, data []byte) error {
	return os.WriteFile(path, data, 0o644)
}

// latencies sums up the stamps of the last run: write → taken (pickup) and
// taken → seen in in/ (delivery).
type latencies struct {
	pickup, deliver dist
}

type dist struct {
	n                  int
	p50, p90, p99, max time.Duration
}

func (d dist) String() string {
	if d.n == 0 {
		return "-"
	}
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("p50 %s p90 %s p99 %s max %s", r(d.p50), r(d.p90), r(d.p99), r(d.max))
}

func distOf(xs []time.Duration) dist {
	if len(xs) == 0 {
		return dist{}
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i] < xs[j] })
	q := func(f float64) time.Duration { return xs[min(len(xs)-1, int(f*float64(len(xs))))] }
	return dist{n: len(xs), p50: q(0.5), p90: q(0.9), p99: q(0.99), max: xs[len(xs)-1]}
}

// Stamp selectors for spans.
func stampWritten(s stamps) time.Time { return s.written }
func stampTaken(s stamps) time.Time   { return s.taken }
func stampSeen(s stamps) time.Time    { return s.seen }

// span is the distribution, over the messages of the last run where both
// stamps were observed, of the time from one stamp to the other.
func (w *workload) span(mu *sync.Mutex, from, to func(stamps) time.Time) dist {
	mu.Lock()
	defer mu.Unlock()
	var xs []time.Duration
	for _, c := range w.channels {
		for _, s := range c.times {
			if a, b := from(s), to(s); !a.IsZero() && !b.IsZero() {
				xs = append(xs, b.Sub(a))
			}
		}
	}
	return distOf(xs)
}

func (w *workload) latencies(mu *sync.Mutex) latencies {
	return latencies{pickup: w.span(mu, stampWritten, stampTaken), deliver: w.span(mu, stampTaken, stampSeen)}
}

// cpuTime is the CPU (user+sys) this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
