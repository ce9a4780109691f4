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
	p, err := NewPublisher("B", DeliverConfig{Path: dst}, nil, nil)
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
	f, _, err := OpenRegular(context.Background(), path, false)
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

// TestOpenRegularAfterASwap: what the check before the open saw as a
// regular file is a named pipe or a link by the open (the sender's folder
// changes meanwhile): the open neither waits on the pipe nor follows the
// link.
func TestOpenRegularAfterASwap(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "Message_A_B.xml")
	secret, _ := exchangetest.WriteFile(t.TempDir(), hdr(1), 100, exchange.FormatXML)
	for _, tc := range []struct {
		kind string
		swap func()
	}{
		{"a named pipe", func() { os.Remove(path); mkfifo(t, path) }},
		{"a symbolic link", func() { os.Remove(path); os.Symlink(secret, path) }},
	} {
		copyFile(t, secret, path)
		err := returnsSoon(t, path, func() error {
			f, _, err := openChecked(context.Background(), path, false, tc.swap)
			if err == nil {
				f.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "not a regular file ("+tc.kind+")") {
			t.Errorf("a regular file swapped for %s before the open: %v, want it refused naming it", tc.kind, err)
		}
		os.Remove(path)
	}
}

// TestOpenRegularDoesNotOpenAPipe: `relay inspect PIPE` opened the pipe
// before refusing it (found by review), which let a writer waiting on it
// go on, its writes then failing once relay closed it; the same open
// reaches a device, where opening has effects. What is not a regular file
// is refused before any open.
func TestOpenRegularDoesNotOpenAPipe(t *testing.T) {
	pipe := filepath.Join(t.TempDir(), "Message_A_B.xml")
	mkfifo(t, pipe)
	opened := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(pipe, os.O_WRONLY, 0) // blocks until a reader comes
		if err == nil {
			w.Close()
		}
		opened <- err
	}()
	time.Sleep(200 * time.Millisecond) // the writer is in its open
	for _, follow := range []bool{true, false} {
		if f, _, err := OpenRegular(context.Background(), pipe, follow); err == nil {
			f.Close()
			t.Errorf("OpenRegular(follow %v) opened a named pipe", follow)
		}
	}
	select {
	case err := <-opened:
		t.Errorf("the named pipe was opened: the writer waiting on it went on (%v)", err)
	case <-time.After(500 * time.Millisecond):
		// Still waiting, as it should: end it.
		if r, err := os.OpenFile(pipe, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			<-opened
			r.Close()
		}
	}
}
