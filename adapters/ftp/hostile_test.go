package ftp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay1c/relay/test/loopback"
)

// scriptedServer is a minimal scripted FTP server for a reply the
// in-process server cannot give: feats are its FEAT lines; mlsd writes the
// listing onto the data connection.
type scriptedServer struct {
	feats []string
	mlsd  func(w io.Writer)
}

func (s *scriptedServer) serve(t *testing.T) string {
	t.Helper()
	addr := loopback.Serve(t, s.session)
	t.Setenv("TEST_FTP_PASSWORD", testPass)
	return "ftp://relay@" + addr + "/out"
}

func (s *scriptedServer) session(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(f string, a ...any) { fmt.Fprintf(c, f+"\r\n", a...) }
	say("220 scripted")
	var data net.Listener
	accept := func() net.Conn {
		if data == nil {
			return nil
		}
		d, err := data.Accept()
		data.Close()
		data = nil
		if err != nil {
			return nil
		}
		return d
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		cmd, _, _ := strings.Cut(line, " ")
		switch strings.ToUpper(cmd) {
		case "USER":
			say("331 password")
		case "PASS":
			say("230 in")
		case "FEAT":
			say("211-Features:")
			for _, f := range s.feats {
				say(" %s", f)
			}
			say("211 End")
		case "TYPE", "OPTS":
			say("200 ok")
		case "PWD":
			say(`257 "/" is current`)
		case "CWD":
			say("250 ok")
		case "NOOP":
			say("200 ok")
		case "QUIT":
			say("221 bye")
			return
		case "EPSV":
			data, _ = net.Listen("tcp", "127.0.0.1:0")
			say("229 Entering Extended Passive Mode (|||%d|)", data.Addr().(*net.TCPAddr).Port)
		case "MLSD":
			say("150 here")
			if d := accept(); d != nil {
				s.mlsd(d)
				d.Close()
			}
			say("226 done")
		default:
			say("502 not implemented")
		}
	}
}

// TestPickupEndlessListing: a server (hostile, or broken and looping over
// a folder) that never ends an MLSD listing but is never silent either.
// io_timeout only measures silence: List never returned and jlaffaye/ftp
// kept every entry in memory, so the node's pickup hung for good while the
// relay's heap grew until it was killed, with every other node (found by
// review). A listing ends at its size bound, and a trickling one at its
// time bound (both lowered here).
func TestPickupEndlessListing(t *testing.T) {
	for _, c := range []struct {
		name   string
		bounds listBounds
		pause  time.Duration // after each 64 KiB
	}{
		{"size", listBounds{bytes: 1 << 20, within: time.Minute}, 0},
		{"time", listBounds{bytes: 1 << 30, within: 2 * time.Second}, 50 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			var sent atomic.Int64
			stop := make(chan struct{})
			defer close(stop)
			s := &scriptedServer{
				feats: []string{"MLST type*;size*;modify*;", "SIZE", "MDTM"},
				mlsd: func(w io.Writer) {
					bw := bufio.NewWriterSize(w, 64<<10)
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						n, err := fmt.Fprintf(bw, "type=file;size=100;modify=20240105120000; junk-%09d-%s.txt\r\n", i, strings.Repeat("x", 150))
						if err != nil {
							return
						}
						if sent.Add(int64(n))%(64<<10) < int64(n) {
							time.Sleep(c.pause) // never silent, never done
						}
					}
				},
			}
			src := newSource(t, "A", testConfig(s.serve(t), "pickup")) // io_timeout 5s
			src.c.listBounds = c.bounds
			done := make(chan error, 1)
			go func() { _, err := src.List(context.Background()); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "the folder listing goes on past") {
					t.Fatalf("an endless listing ended with %v, want its bounds named", err)
				}
			case <-time.After(15 * time.Second):
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				t.Fatalf("List still running after 15 s (3x io_timeout): %d MB of listing received and held (heap %d MB); nothing bounds a listing",
					sent.Load()>>20, ms.HeapAlloc>>20)
			}
		})
	}
}
