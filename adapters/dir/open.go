package dir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// openRegular opens path for reading if it is a regular file, without
// following a symbolic link in its place (OpenRegular).
func openRegular(ctx context.Context, path string) (*os.File, os.FileInfo, error) {
	return OpenRegular(ctx, path, false)
}

// OpenRegular opens path for reading if it is a regular file, without
// waiting for a writer of a named pipe in its place, and unless follow,
// without following a symbolic link there. The folders relay reads are
// written by others, and what was a file when the folder was listed may
// be something else by the time it is opened: a named pipe would block
// the open for good (a pickup slot or a channel's delivery stuck, the
// relay unable to stop), and a link would let whoever writes the folder
// make relay read and send any file it can read. What is not a regular
// file is refused before the open (opening a pipe or a device has effects
// of its own: a writer waiting on the pipe goes on), and, against a swap
// in between, again after it. A file under a lease (a Samba oplock, an
// NFS delegation) answers that open with EWOULDBLOCK while its holder is
// told to let go; the open is tried again until it does, up to
// leaseBreakWait or ctx's end. `relay inspect` and `relay send` follow
// links: the operator named the path.
func OpenRegular(ctx context.Context, path string, follow bool) (*os.File, os.FileInfo, error) {
	return openChecked(ctx, path, follow, nil)
}

// leaseBreakWait bounds the wait for a lease's holder to let go: Linux's
// default lease-break-time, after which the kernel breaks the lease itself.
const leaseBreakWait = 45 * time.Second

// openChecked is OpenRegular; a test swaps the file in between its check
// and its open.
func openChecked(ctx context.Context, path string, follow bool, between func()) (*os.File, os.FileInfo, error) {
	stat, flags := os.Lstat, os.O_RDONLY|nonBlock|noFollow
	if follow {
		stat, flags = os.Stat, os.O_RDONLY|nonBlock
	}
	fi, err := stat(path)
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, notRegular(path, fi.Mode())
	}
	if between != nil {
		between()
	}
	f, err := openLeased(ctx, path, flags)
	if err != nil {
		// A link put in its place since: ELOOP on Linux, other errors on
		// other systems.
		if fi, lerr := os.Lstat(path); !follow && lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return nil, nil, notRegular(path, fi.Mode())
		}
		return nil, nil, err
	}
	if fi, err = f.Stat(); err == nil && !fi.Mode().IsRegular() {
		err = notRegular(path, fi.Mode())
	}
	if err == nil {
		err = blocking(f)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// openLeased opens path with flags, trying again while a lease on the
// file is being broken (see OpenRegular).
func openLeased(ctx context.Context, path string, flags int) (*os.File, error) {
	start, wait := time.Now(), 10*time.Millisecond
	for {
		f, err := os.OpenFile(path, flags, 0)
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EAGAIN) || time.Since(start) > leaseBreakWait {
			return f, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open %s: waiting for a lease on it to be given up: %w", path, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// notRegular is the error for path, which is not a regular file.
func notRegular(path string, m os.FileMode) error {
	return &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("not a regular file (%s)", fileKind(m))}
}

// fileKind names what a path that is not a regular file is.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a folder"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "a " + m.Type().String()
}
