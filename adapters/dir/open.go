package dir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// openRegular opens path for reading if it is a regular file, without
// following a symbolic link in its place (OpenRegular).
func openRegular(path string) (*os.File, os.FileInfo, error) { return OpenRegular(path, false) }

// OpenRegular opens path for reading if it is a regular file, without
// waiting for a writer of a named pipe in its place, and unless follow,
// without following a symbolic link there. The folders relay reads are
// written by others, and what was a file when the folder was listed may
// be something else by the time it is opened: a named pipe would block
// the open for good (a pickup slot or a channel's delivery stuck, the
// relay unable to stop), and a link would let whoever writes the folder
// make relay read and send any file it can read. `relay inspect` and
// `relay send` follow links: the operator named the path.
func OpenRegular(path string, follow bool) (*os.File, os.FileInfo, error) {
	flags := os.O_RDONLY | nonBlock
	if !follow {
		flags |= noFollow
	}
	f, err := os.OpenFile(path, flags, 0)
	if !follow && errors.Is(err, syscall.ELOOP) {
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: errors.New("not a regular file (a symbolic link)")}
	}
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf("not a regular file (%s)", fileKind(fi.Mode()))}
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
