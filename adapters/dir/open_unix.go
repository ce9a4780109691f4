//go:build unix

package dir

import (
	"os"
	"syscall"
)

// nonBlock makes an open of a named pipe return at once, and noFollow an
// open of a symbolic link fail (ELOOP).
const (
	nonBlock = syscall.O_NONBLOCK
	noFollow = syscall.O_NOFOLLOW
)

// blocking takes nonBlock off an opened regular file again: local file
// systems ignore it on reads, but a mounted one (FUSE, a network file
// system) may pass it to its server and answer EAGAIN.
func blocking(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), false) }); err != nil {
		return err
	}
	return serr
}
