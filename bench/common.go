package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
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
	per, extra := messages/channels, messages%channels
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
				return nil, err
			}
			data := bytes.Clone(buf.Bytes())
			sum := sha256.Sum256(data)
			c.msgs = append(c.msgs, sent{no: uint64(k), data: data, sha: hex.EncodeToString(sum[:])})
			w.bytes += int64(len(data))
		}
	}
	return w, nil
}

// makeSite creates <root>/<node>/out and <root>/<node>/in for every node.
func makeSite(root string, nodes []string) error {
	for _, n := range nodes {
		for _, d := range []string{"out", "in"} {
			if err := os.MkdirAll(filepath.Join(root, n, d), 0o755); err != nil {
				return err
			}
		}
	}
	return nil
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

// tracker plays every receiving node: it watches the in/ folders and, each
// time a message file appears (rename of the deliverer's temp file), reads
// it, checks its sha256 against what was sent for that (channel, MessageNo)
// and notes the number. The run is complete when every channel's in/ file
// holds the channel's final MessageNo. Versions overwritten by the next one
// before the tracker read them are not seen here; the relay run checks them
// through the channel state.
type tracker struct {
	root  string
	chans map[string]*chanTrack

	mu        sync.Mutex
	remaining int
	observed  int // distinct (channel, No) seen with the right sha256
	corrupt   []string
	doneAt    time.Time
	done      chan struct{}
}

type chanTrack struct {
	ch       *channel
	seen     []bool
	complete bool
}

func newTracker(root string, w *workload) *tracker {
	t := &tracker{root: root, chans: map[string]*chanTrack{}, remaining: len(w.channels), done: make(chan struct{})}
	for _, c := range w.channels {
		c.times = make([]stamps, len(c.msgs))
		t.chans[c.key()] = &chanTrack{ch: c, seen: make([]bool, len(c.msgs)+1)}
	}
	return t
}

// observe reads one delivered file.
func (t *tracker) observe(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return // overwritten by a rename in between, or not there (yet)
	}
	at := time.Now()
	h, err := exchange.ReadHeader(bytes.NewReader(data), exchange.DefaultLimits())
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: unreadable header: %v", path, err))
		return
	}
	ct := t.chans[h.From+"\x00"+h.To]
	switch {
	case ct == nil || h.ExchangePlan != benchPlan:
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: unexpected message %s %s→%s", path, h.ExchangePlan, h.From, h.To))
		return
	case filepath.Base(path) != ct.ch.name() || filepath.Base(filepath.Dir(filepath.Dir(path))) != h.To:
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: message %s→%s delivered to the wrong place", path, h.From, h.To))
		return
	case h.MessageNo < 1 || h.MessageNo > ct.ch.final():
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: MessageNo %d was never sent", path, h.MessageNo))
		return
	}
	if ct.seen[h.MessageNo] {
		return
	}
	ct.ch.times[h.MessageNo-1].seen = at
	sum := sha256.Sum256(data)
	if got, want := hex.EncodeToString(sum[:]), ct.ch.msgs[h.MessageNo-1].sha; got != want {
		t.corrupt = append(t.corrupt, fmt.Sprintf("%s: No %d has sha256 %s, sent %s", path, h.MessageNo, got, want))
		return
	}
	ct.seen[h.MessageNo] = true
	t.observed++
	if h.MessageNo == ct.ch.final() && !ct.complete {
		ct.complete = true
		t.remaining--
		if t.remaining == 0 {
			t.doneAt = at
			close(t.done)
		}
	}
}

// run watches the in/ folders until ctx ends. A slow rescan of the
// channels not yet complete covers events fsnotify might drop.
func (t *tracker) run(ctx context.Context, w *fsnotify.Watcher) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) && isMessageName(filepath.Base(ev.Name)) {
				t.observe(ev.Name)
			}
		case <-w.Errors:
		case <-tick.C:
			t.mu.Lock()
			var paths []string
			for _, ct := range t.chans {
				if !ct.complete {
					paths = append(paths, filepath.Join(t.root, ct.ch.to, "in", ct.ch.name()))
				}
			}
			t.mu.Unlock()
			for _, p := range paths {
				t.observe(p)
			}
		}
	}
}

// problems returns what the tracker found wrong.
func (t *tracker) problems() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.corrupt...)
	for _, ct := range t.chans {
		if !ct.complete {
			out = append(out, fmt.Sprintf("%s→%s: final No %d never seen in %s/in", ct.ch.from, ct.ch.to, ct.ch.final(), ct.ch.to))
		}
	}
	sort.Strings(out)
	return out
}

// watchDirs makes one fsnotify watcher over the given sub-folder of every node.
func watchDirs(root string, nodes []string, sub string) (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if err := w.Add(filepath.Join(root, n, sub)); err != nil {
			w.Close()
			return nil, err
		}
	}
	return w, nil
}

// takenSignals tells a producer that its file left out/ (the pickup
// deleted it). A signal only wakes the producer; it then checks the file
// is really gone, so a stale signal cannot make it write too early.
type takenSignals struct {
	sig map[string]chan struct{} // by full path
}

func newTakenSignals(root string, w *workload) *takenSignals {
	s := &takenSignals{sig: map[string]chan struct{}{}}
	for _, c := range w.channels {
		s.sig[filepath.Join(root, c.from, "out", c.name())] = make(chan struct{}, 1)
	}
	return s
}

func (s *takenSignals) run(ctx context.Context, w *fsnotify.Watcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
				if ch := s.sig[ev.Name]; ch != nil {
					select {
					case ch <- struct{}{}:
					default:
					}
				}
			}
		case <-w.Errors:
		}
	}
}

// waitGone waits until path no longer exists.
func (s *takenSignals) waitGone(ctx context.Context, path string) error {
	ch := s.sig[path]
	t := time.NewTimer(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ch:
		case <-t.C:
			t.Reset(250 * time.Millisecond)
		case <-ctx.Done():
			return ctx.Err()
		}
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
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

func (w *workload) latencies(mu *sync.Mutex) latencies {
	mu.Lock()
	defer mu.Unlock()
	var pick, del []time.Duration
	for _, c := range w.channels {
		for _, s := range c.times {
			if !s.written.IsZero() && !s.taken.IsZero() {
				pick = append(pick, s.taken.Sub(s.written))
			}
			if !s.taken.IsZero() && !s.seen.IsZero() {
				del = append(del, s.seen.Sub(s.taken))
			}
		}
	}
	return latencies{pickup: distOf(pick), deliver: distOf(del)}
}

// cpuTime is the CPU (user+sys) this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
