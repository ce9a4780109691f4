package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Memory remembers what an `after: keep` pickup already took, so a file left
// in place is not taken twice. Keys and fingerprints are opaque strings.
type Memory interface {
	Seen(ctx context.Context, key, fingerprint string) (bool, error)
	Remember(ctx context.Context, key, fingerprint string) error
}

// Subscriber is a pickup: a Watermill Subscriber that emits one message per
// complete exchange file in the folder and commits the file (after: delete,
// move, keep) only when the message is acked. A nacked file stays and is
// offered again after a backoff.
type Subscriber struct {
	node  string
	cfg   PickupConfig
	after config.After
	mem   Memory
	log   *slog.Logger
	lim   exchange.Limits
	now   func() time.Time

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber makes the pickup of node from cfg.Path. mem may be nil unless
// after is keep.
func NewSubscriber(node string, cfg PickupConfig, after config.After, mem Memory, log *slog.Logger) (*Subscriber, error) {
	cfg.setDefaults()
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("dir %s: %w", node, errors.Join(errs...))
	}
	if after.Action == config.AfterKeep && mem == nil {
		return nil, fmt.Errorf("dir %s: after: keep needs a memory", node)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Subscriber{
		node: node, cfg: cfg, after: after, mem: mem,
		log:     log.With("node", node, "adapter", "dir", "path", cfg.Path),
		lim:     exchange.DefaultLimits(),
		now:     time.Now,
		closing: make(chan struct{}),
	}, nil
}

// candidate is what the scanner knows of one file.
type candidate struct {
	size    int64
	mtime   time.Time
	since   time.Time // when this size/mtime was first seen
	retryAt time.Time // after a nack or an incomplete read
	fails   int
}

// Subscribe starts watching the folder; the topic is ignored (a pickup has
// one source). The channel closes when ctx ends or Close is called.
func (s *Subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	if err := os.MkdirAll(s.cfg.Path, 0o750); err != nil {
		return nil, fmt.Errorf("dir %s: create %s: %w", s.node, s.cfg.Path, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("dir %s: watch: %w", s.node, err)
	}
	if err := w.Add(s.cfg.Path); err != nil {
		w.Close()
		return nil, fmt.Errorf("dir %s: watch %s: %w", s.node, s.cfg.Path, err)
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer w.Close()
		s.loop(ctx, w, out)
	}()
	return out, nil
}

func (s *Subscriber) loop(ctx context.Context, w *fsnotify.Watcher, out chan<- *message.Message) {
	seen := map[string]*candidate{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.closing:
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if !isMessageName(filepath.Base(ev.Name)) {
				continue
			}
			// Let the writer go on; look again once it could have settled.
			resetTimer(timer, s.cfg.Settle.Std())
			continue
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			s.log.Warn("fsnotify error; the periodic rescan covers it", "err", err)
			continue
		case <-timer.C:
		}
		next := s.scan(ctx, seen, out)
		if next <= 0 || next > s.cfg.PollInterval.Std() {
			next = s.cfg.PollInterval.Std()
		}
		resetTimer(timer, next)
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

// isMessageName is the cheap filter: Message_*.xml|.zip (extension in any case).
func isMessageName(base string) bool {
	if !strings.HasPrefix(base, "Message_") {
		return false
	}
	ext := strings.ToLower(filepath.Ext(base))
	return ext == ".xml" || ext == ".zip"
}

// scan looks at the folder once, hands every settled file to the pipeline in
// mtime order, and returns when it wants to look again.
func (s *Subscriber) scan(ctx context.Context, seen map[string]*candidate, out chan<- *message.Message) time.Duration {
	entries, err := os.ReadDir(s.cfg.Path)
	if err != nil {
		s.log.Error("cannot list pickup folder", "err", err)
		return 0
	}
	now := s.now()
	settle := s.cfg.Settle.Std()
	next := time.Duration(0)
	wantAt := func(t time.Time) {
		if d := t.Sub(now); d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	present := map[string]bool{}
	var ready []string
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !isMessageName(name) {
			continue
		}
		if n, err := exchange.ParseName(name); err == nil && n.From != s.node {
			continue // another node's file, e.g. one delivered into a shared folder
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		present[name] = true
		c := seen[name]
		if c == nil || c.size != fi.Size() || !c.mtime.Equal(fi.ModTime()) {
			fails := 0
			if c != nil {
				fails = c.fails
			}
			seen[name] = &candidate{size: fi.Size(), mtime: fi.ModTime(), since: now, fails: fails}
			wantAt(now.Add(settle))
			continue
		}
		if now.Before(c.since.Add(settle)) {
			wantAt(c.since.Add(settle))
			continue
		}
		if now.Before(c.retryAt) {
			wantAt(c.retryAt)
			continue
		}
		ready = append(ready, name)
	}
	for name := range seen {
		if !present[name] {
			delete(seen, name)
		}
	}
	sort.Slice(ready, func(i, j int) bool {
		a, b := seen[ready[i]], seen[ready[j]]
		if !a.mtime.Equal(b.mtime) {
			return a.mtime.Before(b.mtime)
		}
		return ready[i] < ready[j]
	})
	for _, name := range ready {
		if ctx.Err() != nil {
			return 0
		}
		c := seen[name]
		if !s.take(ctx, name, c, out) {
			wantAt(c.retryAt)
		}
	}
	return next
}

// fingerprint identifies one version of a file for keep-memory and for the
// "changed since taken" check.
func fingerprint(size int64, mtime time.Time) string {
	return strconv.FormatInt(size, 10) + "/" + strconv.FormatInt(mtime.UnixNano(), 10)
}

// take proves one file complete, emits it and waits for the verdict. It
// returns true when the file is done with (committed or left for good).
func (s *Subscriber) take(ctx context.Context, name string, c *candidate, out chan<- *message.Message) bool {
	full := filepath.Join(s.cfg.Path, name)
	log := s.log.With("file", name)
	key := "dir:" + absPath(full)
	fp := fingerprint(c.size, c.mtime)
	if s.after.Action == config.AfterKeep {
		ok, err := s.mem.Seen(ctx, key, fp)
		if err != nil {
			log.Warn("cannot read pickup memory; will retry", "err", err)
			c.retryAt = s.now().Add(backoff(c.fails))
			c.fails++
			return false
		}
		if ok {
			c.retryAt = farFuture
			return true
		}
	}

	msg := message.NewMessage(watermill.NewUUID(), nil)
	msg.Metadata.Set(exchange.MetaNode, s.node)
	msg.Metadata.Set(exchange.MetaSource, "dir:"+full)
	msg.Metadata.Set(exchange.MetaFileName, name)

	info, problem := s.inspect(full, name)
	if errors.Is(problem, exchange.ErrIncomplete) && s.now().Sub(c.since) < s.cfg.IncompleteTimeout.Std() {
		log.Debug("file not complete yet; waiting", "reason", problem)
		c.retryAt = s.now().Add(s.cfg.Settle.Std())
		return false
	}
	if problem != nil {
		msg.Metadata.Set(exchange.MetaProblem, problem.Error())
		msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(c.size, 10))
	} else {
		exchange.SetHeader(msg, info.Header)
		msg.Metadata.Set(exchange.MetaSize, strconv.FormatInt(info.Size, 10))
		msg.Metadata.Set(exchange.MetaSHA256, info.SHA256)
	}
	exchange.SetBody(msg, func(context.Context) (io.ReadCloser, error) { return os.Open(full) })

	select {
	case out <- msg:
	case <-ctx.Done():
		return false
	case <-s.closing:
		return false
	}
	select {
	case <-msg.Acked():
		s.commit(ctx, log, full, key, c)
		c.fails = 0
		return true
	case <-msg.Nacked():
		c.retryAt = s.now().Add(backoff(c.fails))
		c.fails++
		log.Warn("pipeline refused the file; it stays and is retried", "retry_in", c.retryAt.Sub(s.now()).Round(time.Second))
		return false
	case <-ctx.Done():
		return false
	case <-s.closing:
		return false
	}
}

var farFuture = time.Unix(1<<40, 0)

// inspect opens and checks the whole file; the name must agree with the header.
func (s *Subscriber) inspect(full, name string) (exchange.Info, error) {
	n, err := exchange.ParseName(name)
	if err != nil {
		return exchange.Info{}, err
	}
	f, err := os.Open(full)
	if err != nil {
		return exchange.Info{}, fmt.Errorf("%w: open: %v", exchange.ErrIncomplete, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return exchange.Info{}, fmt.Errorf("%w: stat: %v", exchange.ErrIncomplete, err)
	}
	info, err := exchange.Inspect(f, fi.Size(), s.lim)
	if err != nil {
		return info, err
	}
	if err := n.Check(info.Header); err != nil {
		return info, err
	}
	return info, nil
}

// commit applies `after` once JetStream holds the message. A file that changed
// since it was read is a new message from the node: it is left in place.
func (s *Subscriber) commit(ctx context.Context, log *slog.Logger, full, key string, c *candidate) {
	fi, err := os.Stat(full)
	if err != nil {
		log.Warn("file vanished before commit", "err", err)
		return
	}
	if fi.Size() != c.size || !fi.ModTime().Equal(c.mtime) {
		log.Info("file changed after it was taken; leaving the new version for the next scan")
		return
	}
	switch s.after.Action {
	case config.AfterDelete:
		err = os.Remove(full)
	case config.AfterMove:
		err = moveTo(full, s.moveDir())
	case config.AfterKeep:
		err = s.mem.Remember(ctx, key, fingerprint(c.size, c.mtime))
	}
	if err != nil {
		// The message is safe in JetStream; a second pickup is dropped as a duplicate.
		log.Error("commit failed; the file may be taken again and dropped as a duplicate", "after", s.after.String(), "err", err)
		return
	}
	log.Debug("committed", "after", s.after.String())
}

func (s *Subscriber) moveDir() string {
	if filepath.IsAbs(s.after.Folder) {
		return s.after.Folder
	}
	return filepath.Join(s.cfg.Path, s.after.Folder)
}

// moveTo renames full into dir, never overwriting an earlier moved file.
func moveTo(full, dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	dst := filepath.Join(dir, filepath.Base(full))
	if _, err := os.Lstat(dst); err == nil {
		dst = filepath.Join(dir, time.Now().UTC().Format("20060102T150405.000000000Z")+"_"+filepath.Base(full))
	}
	return os.Rename(full, dst)
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// backoff is capped exponential: 1s, 2s, 4s ... 5m.
func backoff(fails int) time.Duration {
	if fails > 8 {
		fails = 8
	}
	d := time.Second << fails
	if d > 5*time.Minute {
		d = 5 * time.Minute
	}
	return d
}

// Close stops the scanner; it is idempotent and safe while a message waits for its ack.
func (s *Subscriber) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}
