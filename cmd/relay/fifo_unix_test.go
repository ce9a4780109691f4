//go:build unix

package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestInspectAndSendRefuseNonRegularFiles: `relay inspect` of a named pipe
// blocked in open(2) until a writer came, and Ctrl-C did not end it; `relay
// send /dev/zero` (size 0, reads on) streamed zeros into the live relay's
// spool until relay.max_message_size (found by review). Both refuse
// anything but a regular file now.
func TestInspectAndSendRefuseNonRegularFiles(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "Message_A_B.xml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := run(t, "inspect", fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file (a named pipe)") {
			t.Fatalf("inspect of a named pipe: %v", err)
		}
	case <-time.After(5 * time.Second):
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close() // lets the stuck open end
		}
		<-done
		t.Fatal("inspect of a named pipe still blocked after 5 s")
	}

	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 8<<20))
		got.Add(n)
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}))
	defer srv.Close()
	cfg := writeConfig(t, "relay: { listen: '"+srv.Listener.Addr().String()+"' }\nnodes:\n  A:\n    deliver: { dir: a }\n")
	_, stderr, err := run(t, "send", "-c", cfg, "/dev/zero")
	if err == nil || !strings.Contains(stderr, "/dev/zero: not a regular file (a device)") || got.Load() != 0 {
		t.Fatalf("send /dev/zero: %v, stderr %q, %d bytes reached the API", err, stderr, got.Load())
	}
}
