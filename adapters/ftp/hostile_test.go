package ftp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay1c/relay/adapters/folder/foldertest"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/test/loopback"
	"golang.org/x/text/encoding/charmap"
)

// scriptedServer is a small scripted FTP server for replies the in-process
// server cannot give: cmd answers the commands it knows (false: the
// defaults below); feats are its FEAT lines (no MLST: a LIST-only server).
type scriptedServer struct {
	feats []string
	cmd   func(verb, arg string, say func(string, ...any), data func() net.Conn) bool
}

// serve starts the server and returns the URL of dir on it.
func (s *scriptedServer) serve(t *testing.T, dir string) string {
	t.Helper()
	addr := loopback.Serve(t, s.session)
	t.Setenv("TEST_FTP_PASSWORD", testPass)
	return "ftp://relay@" + addr + "/" + dir
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
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		if verb == "EPSV" {
			if data != nil {
				data.Close()
			}
			data, _ = net.Listen("tcp", "127.0.0.1:0")
			say("229 Entering Extended Passive Mode (|||%d|)", data.Addr().(*net.TCPAddr).Port)
			continue
		}
		if s.cmd != nil && s.cmd(verb, arg, say, accept) {
			continue
		}
		switch verb {
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
		case "TYPE", "OPTS", "NOOP":
			say("200 ok")
		case "PWD":
			say(`257 "/" is current`)
		case "CWD":
			say("250 ok")
		case "QUIT":
			say("221 bye")
			return
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
			endless := func(w io.Writer) {
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
			}
			s := &scriptedServer{
				feats: []string{"MLST type*;size*;modify*;", "SIZE", "MDTM"},
				cmd: func(verb, _ string, say func(string, ...any), data func() net.Conn) bool {
					if verb != "MLSD" {
						return false
					}
					say("150 here")
					if d := data(); d != nil {
						endless(d)
						d.Close()
					}
					say("226 done")
					return true
				},
			}
			src := newSource(t, "A", testConfig(s.serve(t, "out"), "pickup")) // io_timeout 5s
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

// TestPickupEndlessControlReply: a server that answers MLSD with a
// multi-line preliminary reply ("150-...") it never ends, one line every
// 100 ms: never silent for io_timeout. The listing's bounds only covered
// the data connection and jlaffaye/ftp reads a reply without any bound, so
// the pickup's List never returned, holding the endpoint's connection lock
// (the node stuck for good, nothing shown) while the reply grew in memory
// (found by review). The reply to one command is bounded now (a listing's
// by the listing's time bound): List fails and the error is shown.
func TestPickupEndlessControlReply(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	s := &scriptedServer{
		feats: []string{"MLST type*;size*;modify*;", "SIZE", "MDTM"},
		cmd: func(verb, _ string, say func(string, ...any), data func() net.Conn) bool {
			if verb != "MLSD" {
				return false
			}
			say("150-here it comes")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return true
				case <-time.After(100 * time.Millisecond):
				}
				say(" still preparing %d %s", i, strings.Repeat("x", 100))
			}
		},
	}
	cfg := testConfig(s.serve(t, "out"), "pickup")
	cfg.IOTimeout = config.Duration(time.Second)
	src := newSource(t, "A", cfg)
	src.c.listBounds = listBounds{bytes: 1 << 20, within: 2 * time.Second}
	done := make(chan error, 1)
	go func() { _, err := src.List(context.Background()); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "does not end it") {
			t.Fatalf("List of a server that never ends its reply: %v, want the reply's bound", err)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("List still running after 6 s (io_timeout 1 s, listing bound 2 s): an endless control reply holds the pickup (and its connection lock) for good")
	}
}

// TestPickupEmptyFolderAnswered550: a server that answers LIST of an empty
// folder with "550 No files found" (FluentFTP and Cyberduck carry
// workarounds for such servers) has an empty outbox, not a failing one,
// when CWD enters the folder (found by review: the pickup showed the 550
// as its error while the outbox was empty, and relay check said "folder
// missing").
func TestPickupEmptyFolderAnswered550(t *testing.T) {
	s := &scriptedServer{
		feats: []string{"SIZE", "MDTM"},
		cmd: func(verb, arg string, say func(string, ...any), data func() net.Conn) bool {
			switch verb {
			case "LIST":
				say("550 No files found")
				return true
			case "CWD":
				if arg == "out" || arg == "/" {
					say("250 ok")
				} else {
					say("550 no such folder")
				}
				return true
			}
			return false
		},
	}
	url := s.serve(t, "out")
	src := newSource(t, "A", testConfig(url, "pickup"))
	files, err := src.List(context.Background())
	if err != nil {
		t.Errorf("List of an existing, empty folder failed: %v (files %v): the pickup shows this error for as long as the outbox is empty", err, files)
	}
	if err := Check(context.Background(), "A", "pickup", testConfig(url, "pickup"), nil); err != nil && strings.Contains(err.Error(), "list") {
		t.Errorf("relay check of an existing, empty folder: %v", err)
	}
}

// TestConnectionLimitIsNotTLS: a server at its connection limit greets
// with 421 (vsftpd max_per_ip, max_clients): with tls: explicit that is
// not a TLS failure, and relay check's hint names the limit (found by
// review: "tls handshake: AUTH TLS refused" and a hint about certificates).
func TestConnectionLimitIsNotTLS(t *testing.T) {
	addr := loopback.Serve(t, func(c net.Conn) {
		fmt.Fprintf(c, "421 There are too many connections from your internet address.\r\n")
		time.Sleep(100 * time.Millisecond)
		c.Close()
	})
	t.Setenv("TEST_FTP_PASSWORD", testPass)
	cfg := testConfig("ftp://relay@"+addr+"/out", "pickup")
	cfg.TLS = TLSExplicit
	err := Check(context.Background(), "A", "pickup", cfg, nil)
	if err == nil {
		t.Fatal("check passed against a server that refuses the session")
	}
	if strings.Contains(err.Error(), "tls handshake") || strings.Contains(err.Error(), "hint: check tls") {
		t.Errorf("a 421 'too many connections' greeting is reported as a TLS problem: %v", err)
	}
	if !strings.Contains(err.Error(), "hint:") {
		t.Errorf("no hint for the server's connection limit: %v", err)
	}
}

// TestPickupLoginFolderAnswered550: a pickup from the login folder
// (ftp://user@host/) on a server that answers LIST of an empty folder
// with 550 has an empty outbox too (found by review: the 550 was its
// error whenever the outbox was empty).
func TestPickupLoginFolderAnswered550(t *testing.T) {
	s := &scriptedServer{cmd: func(verb, _ string, say func(string, ...any), _ func() net.Conn) bool {
		switch verb {
		case "LIST", "NLST":
			say("550 No files found")
			return true
		}
		return false
	}}
	url := s.serve(t, "")
	src := newSource(t, "A", testConfig(url, "pickup"))
	src.c.noMLSD = true
	files, err := src.List(context.Background())
	if err != nil {
		t.Fatalf("pickup of an empty login folder failed: %v", err)
	}
	if len(files) != 0 {
		t.Fatalf("files %v, want none", files)
	}
}

// TestForeignEncodedNameLeftAlone: ЦО's deliver endpoint says encoding:
// cp1251, its pickup on the same folder of the same server was left at
// utf-8 (the default). The delivered Message_ОП_ЦО.xml lists with a name
// that is not valid UTF-8; such a name does not parse, and ЦО's pickup
// took the message addressed to ЦО's 1C as its own, dead-lettered it and
// deleted it from the server before 1C read it (found by review). It is
// left alone and shown now.
func TestForeignEncodedNameLeftAlone(t *testing.T) {
	root := t.TempDir()
	url := startServer(t, root, "")
	dcfg := testConfig(url, "deliver")
	dcfg.Encoding = "cp1251"
	pub, err := NewPublisher("ЦО", dcfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	body := msgXML(t, "ОП", "ЦО", 3, 1000)
	if err := pub.Publish("", deliverMsg(t, mustHeader(t, body), body)); err != nil {
		t.Fatal(err)
	}
	raw, _ := charmap.Windows1251.NewEncoder().String("Message_ОП_ЦО.xml")
	delivered := filepath.Join(root, raw)
	if !exists(delivered) {
		t.Fatal("test setup: delivery did not land under its Windows-1251 name")
	}
	ch := pickup(t, testConfig(url, "pickup"), "ЦО", false) // encoding: utf-8 (default)
	m := foldertest.Next(ch, 3*time.Second)
	if m == nil && exists(delivered) {
		return // left alone for ЦО's 1C
	}
	if m == nil {
		t.Fatal("the delivered file is gone")
	}
	m.Ack() // the pipeline stores the dead letter and acks
	time.Sleep(1 * time.Second)
	t.Fatalf("node ЦО's pickup took Message_ОП_ЦО.xml, delivered to ЦО's 1C (Windows-1251 name, pickup encoding utf-8), as its own outgoing file: problem %q; still on the server for 1C: %v",
		m.Metadata.Get(exchange.MetaProblem), exists(delivered))
}

// TestWrongEncodingShown: encoding: cp1251 on a server that stores and
// lists names in UTF-8. The node's own Message_ЦО_ОП.xml decodes to
// mojibake, which parses as a message of other "nodes", and was skipped as
// another node's file with no error shown: a silent stall of all the
// node's outgoing messages (found by review). It is shown now.
func TestWrongEncodingShown(t *testing.T) {
	root := t.TempDir()
	cfg := testConfig(startServer(t, root, ""), "pickup")
	cfg.Encoding = "cp1251"
	if err := os.WriteFile(filepath.Join(root, "Message_ЦО_ОП.xml"), msgXML(t, "ЦО", "ОП", 2, 500), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.IsNode = func(c string) bool { return c == "ЦО" || c == "ОП" }
	p, ch := runPickup(t, newSource(t, "ЦО", cfg), cfg, config.After{Action: config.AfterDelete})
	if m := foldertest.Next(ch, 2*time.Second); m != nil {
		m.Ack()
		return
	}
	if msg, _ := p.LastError(); !strings.Contains(msg, "neither code of the name is a node") {
		t.Fatalf("the node's own Message_ЦО_ОП.xml (UTF-8 name, encoding: cp1251) was never taken, and the pickup's error is %q: want it shown", msg)
	}
}

// TestPickupUnreadableFolderShown: vsftpd answers LIST of a folder it
// cannot open (mode 0733/0711: CWD works, opendir does not) with an empty
// listing and "226 Transfer done (but failed to open directory)." — the
// same answer listDir confirms with CWD for a missing folder. CWD worked,
// so the outbox listed as empty for good: the node's files were never
// taken and nothing showed, relay check passing too (found by review). The
// 226 reply's text is noted now: the listing fails, "folder not readable",
// and relay check says what to do.
func TestPickupUnreadableFolderShown(t *testing.T) {
	s := &scriptedServer{
		feats: []string{"SIZE", "MDTM"},
		cmd: func(verb, arg string, say func(string, ...any), data func() net.Conn) bool {
			switch verb {
			case "LIST":
				say("150 Here comes the directory listing.")
				if d := data(); d != nil {
					d.Close()
				}
				say("226 Transfer done (but failed to open directory).")
				return true
			case "CWD":
				say("250 Directory successfully changed.")
				return true
			}
			return false
		},
	}
	url := s.serve(t, "out")
	cfg := testConfig(url, "pickup")
	src := newSource(t, "A", cfg)
	src.c.noMLSD = true
	files, err := src.List(context.Background())
	if err == nil || !strings.Contains(err.Error(), "folder not readable") {
		t.Fatalf("the listing of a folder the server could not open: %d files, error %v; want \"folder not readable\"", len(files), err)
	}
	if err := Check(context.Background(), "A", "pickup", cfg, nil); err == nil || !strings.Contains(err.Error(), "read permission") {
		t.Errorf("relay check of a folder the user cannot read: %v", err)
	}
}

// TestWrongEncodingMixedCodesLeftAlone: encoding: cp1251 on a server that
// lists names in UTF-8 (as in TestWrongEncodingShown), for a node whose
// code is Latin (A) and a partner whose code is Cyrillic (ОП).
// Message_A_ОП.xml read as Windows-1251 is Message_A_РћРџ.xml; one of its
// codes is a node, so the pickup took it under the mangled name: a dead
// letter (name and header disagree), and the file was deleted from the
// server (found by review). A name the server sends in UTF-8 is never
// downloaded now: the file stays, and the pickup's error says why.
func TestWrongEncodingMixedCodesLeftAlone(t *testing.T) {
	root := t.TempDir()
	cfg := testConfig(startServer(t, root, ""), "pickup")
	cfg.Encoding = "cp1251"
	file := filepath.Join(root, "Message_A_ОП.xml")
	if err := os.WriteFile(file, msgXML(t, "A", "ОП", 2, 500), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.IsNode = func(c string) bool { return c == "A" || c == "ОП" }
	p, ch := runPickup(t, newSource(t, "A", cfg), cfg, config.After{Action: config.AfterDelete})
	m := foldertest.Next(ch, 2*time.Second)
	if m == nil {
		if msg, _ := p.LastError(); !exists(file) || !strings.Contains(msg, "lists this name in UTF-8") {
			t.Fatalf("Message_A_ОП.xml (UTF-8 name, encoding: cp1251): still on the server %v, pickup error %q; want it left alone and shown", exists(file), msg)
		}
		return
	}
	name, problem := m.Metadata.Get(exchange.MetaFileName), m.Metadata.Get(exchange.MetaProblem)
	m.Ack() // the pipeline stores it (a dead letter) and acks
	time.Sleep(time.Second)
	if name == "Message_A_ОП.xml" && problem == "" {
		return // taken under its right name
	}
	msg, _ := p.LastError()
	t.Fatalf("Message_A_ОП.xml (UTF-8 name, encoding: cp1251) taken as %q, problem %q; file still on the server: %v; pickup error %q",
		name, problem, exists(file), msg)
}

// TestDeliverNameNotInCP1251Refused: with encoding: cp1251, a name that
// Windows-1251 cannot write (a Kazakh code, Қ) was sent as its UTF-8 bytes
// ("the server will say the file is missing" held for a RETR, not for a
// STOR): the delivery "succeeded" under a name in another encoding than
// every other file of the folder, which the node's 1C, reading the folder
// in Windows-1251, never finds (found by review). It fails for good now
// (no retry makes the name writable: a dead letter naming the name and
// the encoding), and nothing is uploaded.
func TestDeliverNameNotInCP1251Refused(t *testing.T) {
	root := t.TempDir()
	cfg := testConfig(startServer(t, root, ""), "deliver")
	cfg.Encoding = "cp1251"
	pub, err := NewPublisher("ҚА", cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	body := msgXML(t, "A", "ҚА", 3, 500)
	err = pub.Publish("", deliverMsg(t, mustHeader(t, body), body))
	ents, _ := os.ReadDir(root)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	switch {
	case err == nil:
		t.Fatalf("delivery of Message_A_ҚА.xml with encoding: cp1251 reported success; the folder holds %q (a UTF-8 name on a Windows-1251 server)", names)
	case !exchange.IsPermanent(err) || !strings.Contains(err.Error(), "Message_A_ҚА.xml") || !strings.Contains(err.Error(), "Windows-1251"):
		t.Fatalf("delivery of Message_A_ҚА.xml with encoding: cp1251: %v (permanent: %v); want a permanent error naming the name and the encoding", err, exchange.IsPermanent(err))
	case len(names) > 0:
		t.Fatalf("the refused delivery left %q in the folder", names)
	}
}
