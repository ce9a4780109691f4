package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/config"
)

// NewSubscriber makes the pickup of node from cfg.Path: a folder.Pickup over
// the local folder, woken by fsnotify. mem may be nil unless after is keep;
// pw (may be nil) reads password-protected zips.
func NewSubscriber(node string, cfg PickupConfig, after config.After, mem folder.KeepMemory, pw folder.Passwords, log *slog.Logger) (*folder.Pickup, error) {
	cfg.setDefaults()
	if errs := append(cfg.Validate(), cfg.CheckAfter(after)...); len(errs) > 0 {
		return nil, fmt.Errorf("dir %s: %w", node, errors.Join(errs...))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Path, 0o750); err != nil {
		return nil, fmt.Errorf("dir %s: create %s: %w", node, cfg.Path, err)
	}
	src := &source{node: node, path: cfg.Path, log: log.With("node", node, "adapter", "dir", "path", cfg.Path)}
	return folder.NewPickup(src, folder.Options{
		Node: node, IsNode: cfg.IsNode, Adapter: "dir", TrustMTime: true, Limits: cfg.Limits.WithDefaults(),
		Settle: cfg.Settle.Std(), PollInterval: cfg.PollInterval.Std(), IncompleteTimeout: cfg.IncompleteTimeout.Std(),
		After: after, Memory: mem, Passwords: pw, Log: log.With("path", cfg.Path),
	})
}

// source is a local pickup folder.
type source struct {
	node string
	path string
	log  *slog.Logger

	// swept are the folders on other file systems moved into since the
	// start, whose partial copies a killed relay left were removed.
	sweptMu sync.Mutex
	swept   map[string]bool
}

var _ folder.Notifier = (*source)(nil)

func (s *source) List(context.Context) ([]folder.File, error) {
	entries, err := os.ReadDir(s.path)
	if err != nil {
		return nil, fmt.Errorf("dir %s: list %s: %w", s.node, s.path, err)
	}
	var files []folder.File
	for _, e := range entries {
		if !e.Type().IsRegular() || !folder.Listed(e.Name()) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // gone since the listing
		}
		files = append(files, folder.File{Name: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return files, nil
}

func (s *source) Stat(_ context.Context, name string) (folder.File, error) {
	fi, err := os.Stat(filepath.Join(s.path, name))
	if err != nil {
		return folder.File{}, err
	}
	return folder.File{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Fetch opens the file itself: inspection and the pipeline read the same
// open file, so a replacement written meanwhile is a separate message. The
// listing took regular files only; openRegular keeps to that if the name
// has become a link or a named pipe since.
func (s *source) Fetch(ctx context.Context, f folder.File) (folder.Fetched, error) {
	h, fi, err := openRegular(ctx, filepath.Join(s.path, f.Name))
	if err != nil {
		return folder.Fetched{}, fmt.Errorf("dir %s: open %s: %w", s.node, f.Name, err)
	}
	return folder.Fetched{File: h, Size: fi.Size(), Release: func() { h.Close() }}, nil
}

func (s *source) Remove(_ context.Context, name string) error {
	return os.Remove(filepath.Join(s.path, name))
}

// Rename renames a file of the folder.
func (s *source) Rename(_ context.Context, from, to string) error {
	return os.Rename(filepath.Join(s.path, from), filepath.Join(s.path, to))
}

// Move moves name into the folder to (relative to the pickup folder, or
// absolute) as the file as, creating the folder; a file of that name there
// already (an earlier moved one) is kept, and this one gets a UTC time
// prefix. A folder on another file system gets a copy (synced, then
// renamed into place) before the file is removed from the pickup folder.
func (s *source) Move(ctx context.Context, name, as, to string) error {
	if !filepath.IsAbs(to) {
		to = filepath.Join(s.path, to)
	}
	if err := s.move(ctx, name, as, to); err != nil {
		return fmt.Errorf("dir %s: move %s to %s: %w", s.node, as, to, err)
	}
	return nil
}

func (s *source) move(ctx context.Context, name, as, to string) error {
	if err := os.MkdirAll(to, 0o750); err != nil {
		return err
	}
	dst := filepath.Join(to, as)
	if _, err := os.Lstat(dst); err == nil {
		dst = filepath.Join(to, time.Now().UTC().Format("20060102T150405.000000000Z")+"_"+as)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	src := filepath.Join(s.path, name)
	err := os.Rename(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		s.sweepOnce(to)
		return moveAcross(ctx, src, dst)
	}
	return err
}

// sweepOnce removes, at the first move into folder to since the start, the
// partial copies a relay killed while it moved a file there left (found
// by review: nothing removed them).
func (s *source) sweepOnce(to string) {
	s.sweptMu.Lock()
	defer s.sweptMu.Unlock()
	if s.swept[to] {
		return
	}
	if s.swept == nil {
		s.swept = map[string]bool{}
	}
	s.swept[to] = true
	sweepParts(to, s.log)
}

// moveAcross moves src to dst on another file system, where rename cannot:
// it copies src to a .relay-*.part file in dst's folder, syncs it, gives it
// src's mode and mtime, renames it to dst and syncs the folder, then
// removes src. If src changed meanwhile (1C wrote its next message) or
// cannot be removed, the copy goes and src stays, as after a failed rename.
func moveAcross(ctx context.Context, src, dst string) error {
	in, before, err := openRegular(ctx, src)
	if err != nil {
		return err
	}
	defer in.Close()
	to := filepath.Dir(dst)
	tmp, err := createPart(to)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.CopyBuffer(tmp, folder.CtxReader{Ctx: ctx, R: in}, make([]byte, 256<<10)); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, tmp.Name(), err)
	}
	if err := tmp.Chmod(before.Mode().Perm()); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Chtimes(tmp.Name(), time.Time{}, before.ModTime()); err != nil {
		return err
	}
	now, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if !os.SameFile(before, now) || now.Size() != before.Size() || !now.ModTime().Equal(before.ModTime()) {
		return fmt.Errorf("%s changed while it was copied to %s; it stays", src, to)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	done = true
	if d, err := os.Open(to); err == nil {
		_ = d.Sync()
		d.Close()
	}
	if err := os.Remove(src); err != nil {
		os.Remove(dst)
		return fmt.Errorf("copied to %s, but cannot remove %s (the copy is removed again): %w", dst, src, err)
	}
	return nil
}

func (s *source) Where(name string) string {
	full := filepath.Join(s.path, name)
	if a, err := filepath.Abs(full); err == nil {
		full = a
	}
	return "dir:" + full
}

// Notify wakes the pickup on changes to Message_* files; the periodic rescan
// covers events fsnotify misses.
func (s *source) Notify(ctx context.Context) (<-chan struct{}, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("dir %s: watch: %w", s.node, err)
	}
	if err := w.Add(s.path); err != nil {
		w.Close()
		return nil, fmt.Errorf("dir %s: watch %s: %w", s.node, s.path, err)
	}
	ch := make(chan struct{}, 1)
	go func() {
		defer close(ch)
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if !folder.Listed(filepath.Base(ev.Name)) {
					continue
				}
				select {
				case ch <- struct{}{}:
				default:
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				s.log.Warn("fsnotify error; the periodic rescan covers it", "err", err)
			}
		}
	}()
	return ch, nil
}
