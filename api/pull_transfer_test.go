package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/config"
)

// TestPullReadmeExample runs the README's pull example against a relay
// whose transfer breaks off half way (here the store's read fails; a
// dropped connection does the same) and one that ends well. The example
// acknowledged the broken download too, and relay took it: the delivery
// counted as complete, the node held half a file, the message was gone
// (found by review). The example checks curl and the sha256 now, and
// relay refuses an acknowledgement no whole transfer came before (409).
func TestPullReadmeExample(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("no curl: the test script installs it")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(readme), "api=127.0.0.1:8088/api/v1/nodes/MOB/messages")
	if i < 0 {
		t.Fatal("README's pull example not found")
	}
	script := string(readme[i:])
	script = script[:strings.Index(script, "```")]
	good := "<v8msg:Message>" + strings.Repeat("x", 256<<10) + "</v8msg:Message>"
	for _, broken := range []bool{true, false} {
		mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(5 * time.Minute)}, nil)
		defer mb.Close()
		opens := 0
		done := park(mb, mobMsg(watermill.NewUUID(), "CO", 1, good, func(context.Context) (io.ReadCloser, error) {
			if opens++; opens == 1 || !broken { // the mailbox's own open
				return io.NopCloser(strings.NewReader(good)), nil
			}
			// Half the file, then the store does not answer.
			return io.NopCloser(io.MultiReader(strings.NewReader(good[:128<<10]), errReader{errors.New("nats: timeout")})), nil
		}), 1)
		srv := httptest.NewServer(mobServer(mobConfig(t), mb))
		defer srv.Close()
		cmd := exec.Command("sh", "-c", strings.ReplaceAll(script, "127.0.0.1:8088", srv.Listener.Addr().String()))
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), "MOB_TOKEN=mob-secret")
		out, _ := cmd.CombinedOutput()
		got, _ := os.ReadFile(filepath.Join(cmd.Dir, "msg"))
		select {
		case err := <-done:
			if broken || err != nil {
				t.Errorf("broken %v: README's example acknowledged a download of %d of %d bytes: %v (output %q)", broken, len(got), len(good), err, out)
			}
		case <-time.After(2 * time.Second):
			if !broken {
				t.Errorf("README's example did not acknowledge a whole download (%d of %d bytes; output %q)", len(got), len(good), out)
			}
		}
		if broken {
			// relay itself refuses the acknowledgement of what was never
			// sent whole, whatever the node does.
			o, ok := mb.Next()
			if !ok {
				t.Fatal("the message broken off is not offered again")
			}
			if err := mb.Ack(o.ID); !errors.Is(err, pull.ErrNotSent) {
				t.Errorf("ack of a message never sent whole: %v, want ErrNotSent", err)
			}
		}
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestPullSlowSteadyReaderNotCut: README: a transfer "that the node takes
// nothing of for a minute, ends". The deadline was set per write of
// io.Copy's 32 KiB buffer, so a node that took bytes all the time, but
// less than 32 KiB per pullIdle, was cut off (found by review). Scaled
// down here: pullIdle 300 ms, the node takes 512 bytes every 20 ms (never
// idle 300 ms).
func TestPullSlowSteadyReaderNotCut(t *testing.T) {
	cfg := mobConfig(t)
	mb := pull.NewMailbox("MOB", pull.Config{Lease: config.Duration(5 * time.Minute)}, nil)
	defer mb.Close()
	content := "<v8msg:Message>" + strings.Repeat("x", 96<<10) + "</v8msg:Message>"
	park(mb, mobMsg(watermill.NewUUID(), "CO", 1, content, func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(content)), nil
	}), 1)
	s := mobServer(cfg, mb)
	s.pullIdle = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = s.ServeOn(ctx, smallSendBuf{ln}) }()
	defer func() { cancel(); <-served }()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /api/v1/nodes/MOB/messages/next HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer mob-secret\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	got, buf := 0, make([]byte, 512)
	start := time.Now()
	for got < len(content) && time.Since(start) < 8*time.Second {
		n, err := resp.Body.Read(buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got < len(content) && time.Since(start) < 8*time.Second {
		t.Errorf("a node taking 512 bytes every 20 ms was cut off after %d of %d bytes (%v), with pullIdle %v: it never stopped taking the file", got, len(content), time.Since(start).Round(10*time.Millisecond), s.pullIdle)
	}
}

// smallSendBuf gives accepted connections a small send buffer, as a slow
// link's would be in steady state (loopback's grow to megabytes).
type smallSendBuf struct{ net.Listener }

func (l smallSendBuf) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}
