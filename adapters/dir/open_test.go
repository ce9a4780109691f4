//go:build unix

package dir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
)

// returnsSoon runs f and fails the test if it has not returned within 5 s.
// A named pipe at pipe is then opened for writing too, which ends a
// blocked open of it, so that the test ends and says what happened.
func returnsSoon(t *testing.T, pipe string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		if w, err := os.OpenFile(pipe, os.O_RDWR, 0); err == nil {
			defer w.Close()
		}
		<-done
		t.Fatalf("still blocked after 5 s on the named pipe %s", filepath.Base(pipe))
		return nil
	}
}

// mkfifo makes a named pipe at path.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o666); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
}

// TestFetchTakesRegularFilesOnly: a pickup folder's file replaced, after
// the listing, by a named pipe blocked the open for good (the pickup slot
// and the relay's stop waited on it), and by a symbolic link made relay
// read whatever the link named and send it on as the sender's message.
func TestFetchTakesRegularFilesOnly(t *testing.T) {
	dir := t.TempDir()
	s := &source{node: "A", path: dir}
	pipe := filepath.Join(dir, "Message_A_B.xml")
	mkfifo(t, pipe)
	err := returnsSoon(t, pipe, func() error {
		f, err := s.Fetch(context.Background(), folder.File{Name: "Message_A_B.xml"})
		if err == nil {
			f.Release()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Errorf("Fetch of a named pipe: %v, want it refused as a named pipe", err)
	}

	secret, _ := exchangetest.WriteFile(t.TempDir(), hdr(1), 100, exchange.FormatXML)
	if err := os.Symlink(secret, filepath.Join(dir, "Message_A_C.xml")); err != nil {
		t.Fatal(err)
	}
	if f, err := s.Fetch(context.Background(), folder.File{Name: "Message_A_C.xml"}); err == nil {
		f.Release()
		t.Error("Fetch followed a symbolic link out of the pickup folder")
	} else if !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("Fetch of a symbolic link: %v, want it named", err)
	}

	// A regular file still opens, with its size.
	good, _ := exchangetest.WriteFile(t.TempDir(), hdr(2), 100, exchange.FormatXML)
	copyFile(t, good, filepath.Join(dir, "Message_A_D.xml"))
	fi, _ := os.Stat(good)
	f, err := s.Fetch(context.Background(), folder.File{Name: "Message_A_D.xml"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Release()
	if f.Size != fi.Size() {
		t.Errorf("size %d, want %d", f.Size, fi.Size())
	}
}

// TestDeliverRefusesWhatIsNotAFile: a named pipe at the destination's
// final name blocked the delivery for good (the read of its number never
// returned; the channel stuck, the relay unable to stop). Now the
// delivery fails saying what is in the way, and leaves it there.
func TestDeliverRefusesWhatIsNotAFile(t *testing.T) {
	dst := t.TempDir()
	p, err := NewPublisher("B", DeliverConfig{Path: dst}, nil)
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(dst, "Message_A_B.xml")
	mkfifo(t, final)
	f5, _ := exchangetest.WriteFile(t.TempDir(), hdr(5), 3000, exchange.FormatXML)
	err = returnsSoon(t, final, func() error { return p.Publish("", deliverMsg(t, f5, hdr(5))) })
	if err == nil || !strings.Contains(err.Error(), "named pipe") {
		t.Errorf("Publish over a named pipe: %v, want it refused naming the pipe", err)
	}
	if fi, err := os.Lstat(final); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("the named pipe was replaced (%v, %v)", fi, err)
	}
}

// TestOpenRegularLeavesTheFileBlocking: the open is non-blocking (for a
// named pipe in the file's place); the file read afterwards is not, as a
// mounted file system may answer a non-blocking read with EAGAIN.
func TestOpenRegularLeavesTheFileBlocking(t *testing.T) {
	path, _ := exchangetest.WriteFile(t.TempDir(), hdr(1), 100, exchange.FormatXML)
	f, _, err := OpenRegular(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags uintptr
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		flags, _, errno = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	}); err != nil || errno != 0 {
		t.Fatal(err, errno)
	}
	if flags&syscall.O_NONBLOCK != 0 {
		t.Error("the opened file is still O_NONBLOCK")
	}
}
