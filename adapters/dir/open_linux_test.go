package dir

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestOpenRegularWaitsForALeaseBreak: a file under a write lease (Samba
// with kernel oplocks, an NFS delegation) answers the non-blocking open
// with EWOULDBLOCK while the holder is asked to let go; os.Open waited for
// that, OpenRegular failed at once (the pickup showed trouble, a delivery
// failed; found by review). It waits for the break now, within ctx.
func TestOpenRegularWaitsForALeaseBreak(t *testing.T) {
	signal.Ignore(syscall.SIGIO) // the holder, this process, is told by SIGIO
	path := filepath.Join(t.TempDir(), "Message_A_B.xml")
	if err := os.WriteFile(path, []byte("<x/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	leased := func() *os.File {
		holder, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := setLease(holder, syscall.F_WRLCK); err != nil {
			holder.Close()
			t.Skipf("F_SETLEASE: %v", err)
		}
		return holder
	}

	holder := leased()
	released := make(chan struct{})
	go func() { // answers the break, as Samba does once its client flushed
		defer close(released)
		time.Sleep(200 * time.Millisecond)
		setLease(holder, syscall.F_UNLCK)
	}()
	f, _, err := OpenRegular(context.Background(), path, false)
	if err != nil {
		t.Errorf("open of a file whose lease is being given up: %v", err)
	} else {
		f.Close()
	}
	<-released
	holder.Close()

	// A holder that does not let go: the wait ends with ctx.
	holder = leased()
	defer holder.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if f, _, err := OpenRegular(ctx, path, false); err == nil {
		f.Close()
		t.Error("opened a file whose lease was never given up")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("open under a lease past ctx's end: %v, want the deadline named", err)
	}
}

func setLease(f *os.File, typ int) error {
	_, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_SETLEASE, uintptr(typ))
	if errno != 0 {
		return errno
	}
	return nil
}
