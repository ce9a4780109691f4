package dir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/exchange"
)

// tempPrefix marks relay's own partial files; 1C only reads Message_* names.
const tempPrefix = ".relay-"

// Publisher is a delivery: Publish returns only after the destination folder
// holds the complete file under its final name (temp file, fsync, rename,
// fsync of the folder). A reader of the folder never sees partial content.
type Publisher struct {
	node string
	cfg  DeliverConfig
	log  *slog.Logger
	lim  exchange.Limits
	// pw reads a password-protected zip already at the destination, to
	// compare its number (nil: no passwords).
	pw folder.Passwords

	// wrote remembers, per final path, the file this publisher renamed
	// there last and its header, so the next delivery on the channel
	// need not open and parse it again (checkNotNewer).
	mu    sync.Mutex
	wrote map[string]written

	// open opens the file at a destination's final name (openRegular; a
	// test makes it fail).
	open func(ctx context.Context, name string) (*os.File, os.FileInfo, error)

	trouble.Last
}

// written is a file a delivery left under its final name.
type written struct {
	fi os.FileInfo
	h  exchange.Header
}

// maxWritten bounds the remembered files (one per channel into the node).
const maxWritten = 4096

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher makes the delivery of node into cfg.Path, creating the folder
// and removing partial files an earlier crash left behind. pw gives the
// archive passwords that read a password-protected zip found at the
// destination (config.ZipPasswords; nil: none).
func NewPublisher(node string, cfg DeliverConfig, pw folder.Passwords, log *slog.Logger) (*Publisher, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("dir %s: %w", node, errors.Join(errs...))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Publisher{node: node, cfg: cfg, log: log.With("node", node, "adapter", "dir", "path", cfg.Path), lim: exchange.DefaultLimits(), pw: pw, open: openRegular}
	if err := os.MkdirAll(cfg.Path, 0o750); err != nil {
		return nil, fmt.Errorf("dir %s: create %s: %w", node, cfg.Path, err)
	}
	sweepParts(cfg.Path, p.log)
	return p, nil
}

// staleParts is how old a .relay-*.part file must be for sweepParts to
// take it for one a killed relay left, not one being written.
const staleParts = 10 * time.Minute

// sweepParts removes the .relay-*.part files in dir older than staleParts:
// what a relay killed while it wrote one there left behind.
func sweepParts(dir string, log *slog.Logger) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tempPrefix) || !strings.HasSuffix(e.Name(), ".part") {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleParts {
			if os.Remove(filepath.Join(dir, e.Name())) == nil {
				log.Info("removed partial file of an interrupted write", "folder", dir, "file", e.Name())
			}
		}
	}
}

// Publish delivers each message; the topic is ignored (one destination).
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

func (p *Publisher) deliver(ctx context.Context, m *message.Message) error {
	d, err := exchange.OpenDelivery(ctx, m, "dir "+p.node)
	if err != nil {
		return err
	}
	defer d.Body.Close()
	name, h, want, body := d.Name, d.Header, d.Size, d.Body
	dst := filepath.Join(p.cfg.Path, name)
	if d.Keep.On {
		// A sequential channel's message waits while the node has not
		// read the one there: asked before the copy too, or every look
		// while it waits would copy the whole payload.
		if err := p.checkNotNewer(ctx, dst, h, want, d.Keep); err != nil {
			return err
		}
	}
	tmp, err := createPart(p.cfg.Path)
	if errors.Is(err, fs.ErrNotExist) {
		// The folder went away while relay ran (an operator cleared it
		// out): made again, as at start (found by review).
		if err = os.MkdirAll(p.cfg.Path, 0o750); err == nil {
			tmp, err = createPart(p.cfg.Path)
		}
	}
	if err != nil {
		return fmt.Errorf("dir %s: create temp for %s: %w", p.node, name, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	sum := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(tmp, sum), folder.CtxReader{Ctx: ctx, R: body}, make([]byte, exchange.BufferSize(want, 256<<10)))
	if err != nil {
		return fmt.Errorf("dir %s: write %s: %w", p.node, name, err)
	}
	if n != want {
		return fmt.Errorf("dir %s: %s: got %d bytes, want %d", p.node, name, n, want)
	}
	if got, wantSum := hex.EncodeToString(sum.Sum(nil)), m.Metadata.Get(exchange.MetaSHA256); wantSum != "" && got != wantSum {
		return exchange.Permanent(fmt.Errorf("dir %s: %s: %w: sha256 %s, want %s", p.node, name, exchange.ErrDamaged, got, wantSum))
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("dir %s: fsync %s: %w", p.node, name, err)
	}
	fi, ferr := tmp.Stat() // what dst holds after the rename
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("dir %s: close %s: %w", p.node, name, err)
	}
	// Checked once, last: a newer message may also land while this one is copied.
	if err := p.checkNotNewer(ctx, dst, h, want, d.Keep); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("dir %s: rename to %s: %w", p.node, name, err)
	}
	done = true
	if ferr == nil {
		p.remember(dst, fi, h)
	}
	if d, err := os.Open(p.cfg.Path); err == nil {
		_ = d.Sync()
		d.Close()
	}
	p.log.Debug("delivered", "message_id", m.UUID, "file", name, "message_no", h.MessageNo, "bytes", n)
	return nil
}

// createPart makes a new, empty .relay-*.part file in dir with the mode
// any program's new file gets (0666 less the umask); os.CreateTemp's 0600
// would carry over to the delivered file, which the 1C server reading the
// folder, usually another user, could then not open.
func createPart(dir string) (*os.File, error) {
	for range 100 {
		name := filepath.Join(dir, tempPrefix+strconv.FormatUint(rand.Uint64(), 36)+".part")
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, err
	}
	return nil, errors.New("no free temp name")
}

// checkNotNewer refuses to replace a file of the same channel with a higher
// MessageNo: an older message never overwrites a newer one (DESIGN.md §6.3).
// A file of the same channel and number and of the message's size is this
// message, written by an attempt the relay did not live to record: it is
// left as it is (exchange.ErrInPlace). A file there that cannot be read
// (no right to read it, a disk error) fails the delivery, which is tried
// again: only a missing file, or one that reads and is not a message, is
// replaced. Nor is anything but a regular file there (a named pipe, a
// link): the delivery fails, saying what is in the way, until someone
// removes it. Under k (a sequential channel) a lower number the node has
// not acknowledged is not replaced either (exchange.ErrUnread).
func (p *Publisher) checkNotNewer(ctx context.Context, dst string, h exchange.Header, size int64, k exchange.Keep) error {
	have, haveSize, ok := p.recall(dst)
	if !ok {
		f, fi, err := p.open(ctx, dst)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		fail := func(err error) error {
			return fmt.Errorf("dir %s: read %s to compare its number: %w", p.node, filepath.Base(dst), err)
		}
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		var passwords []string
		if p.pw != nil {
			passwords = p.pw(h.From, h.To)
		}
		if have, err = exchange.ReadFileHeaderWith(f, fi.Size(), p.lim, passwords); err != nil {
			if exchange.IsVerdict(err) {
				// Not a message, a partial one, or a password-protected
				// zip no configured password reads: ours replaces it.
				return nil
			}
			return fail(err)
		}
		haveSize = fi.Size()
	}
	return exchange.CheckReplace("dir "+p.node+": "+filepath.Base(dst), have, haveSize, h, size, k)
}

// remember notes that dst now holds the file fi with header h.
func (p *Publisher) remember(dst string, fi os.FileInfo, h exchange.Header) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wrote == nil || len(p.wrote) >= maxWritten {
		p.wrote = map[string]written{}
	}
	p.wrote[dst] = written{fi, h}
}

// recall is the header and size of the file at dst if it is still the one
// this publisher wrote there (same file, size and mtime).
func (p *Publisher) recall(dst string) (exchange.Header, int64, bool) {
	p.mu.Lock()
	w, ok := p.wrote[dst]
	p.mu.Unlock()
	if !ok {
		return exchange.Header{}, 0, false
	}
	fi, err := os.Lstat(dst)
	if err != nil || !os.SameFile(fi, w.fi) || fi.Size() != w.fi.Size() || !fi.ModTime().Equal(w.fi.ModTime()) {
		return exchange.Header{}, 0, false
	}
	return w.h, fi.Size(), true
}

// Close has nothing to release; it exists for message.Publisher.
func (p *Publisher) Close() error { return nil }

// Check proves a folder usable: it exists or can be created, and a probe
// file can be written and removed.
func Check(path string) error {
	if err := os.MkdirAll(path, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f, err := os.CreateTemp(path, tempPrefix+"check-*.part")
	if err != nil {
		return fmt.Errorf("write probe file in %s: %w", path, err)
	}
	f.Close()
	if err := os.Remove(f.Name()); err != nil {
		return fmt.Errorf("remove probe file %s: %w", f.Name(), err)
	}
	return nil
}
