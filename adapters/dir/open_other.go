//go:build !unix

package dir

import "os"

// No such flags here: OpenRegular checks the type after the open.
const (
	nonBlock = 0
	noFollow = 0
)

func blocking(*os.File) error { return nil }
