//go:build !unix

package dir

// No such flags here: OpenRegular checks the type after the open.
const (
	nonBlock = 0
	noFollow = 0
)
