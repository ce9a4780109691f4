//go:build unix

package dir

import "syscall"

// nonBlock makes an open of a named pipe return at once, and noFollow an
// open of a symbolic link fail (ELOOP); on a regular file they change
// nothing.
const (
	nonBlock = syscall.O_NONBLOCK
	noFollow = syscall.O_NOFOLLOW
)
