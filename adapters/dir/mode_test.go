//go:build unix

package dir

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestDeliverFileMode: a delivered file gets the mode any program's new
// file gets (0666 less the umask), not os.CreateTemp's 0600: the 1C server
// that reads the folder usually runs as another user (usr1cv8).
func TestDeliverFileMode(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	_, dst, _ := publisherWith5(t)
	fi, err := os.Stat(filepath.Join(dst, "Message_A_B.xml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o644 {
		t.Fatalf("delivered file has mode %o, want 644", got)
	}
}
