package e2e

// A real vsftpd (Debian's /usr/sbin/vsftpd) started by a test on 127.0.0.1,
// for the FTP endpoint tests: plain FTP, explicit FTPS (AUTH TLS) and
// implicit FTPS, one server per test, stopped by PID in t.Cleanup.
//
// This file is the testing.TB face of test/realserver (StartVsftpd), which
// starts, stops and configures the server, makes its user, cert and ports,
// and whose header lists the vsftpd facts all this relies on. The bench
// starts the same server outside `go test`.

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"

	"github.com/relay1c/relay/test/realserver"
)

const (
	// ftpUser is the local system user every test vsftpd logs in; it is
	// created on first use (root only) and kept.
	ftpUser     = realserver.FTPUser
	ftpPassword = realserver.FTPPassword
)

// ftpOptions configures startVsftpd.
type ftpOptions struct {
	TLS string // "none" (or ""), "explicit" (AUTH TLS on the control port), "implicit"
}

// ftpServer is one vsftpd started by a test on 127.0.0.1. The fields (Host,
// Port, User, Password, Root, CAFile, TLS, UID, GID) and Addr and URL come
// from realserver.Vsftpd; the methods below fail the test instead of
// returning errors.
type ftpServer struct {
	*realserver.Vsftpd
	t testing.TB
}

// serversRequired reports whether a missing server is a failure
// (scripts/test.sh sets RELAY_E2E_REQUIRE_SERVERS=1) rather than a skip.
func serversRequired() bool { return os.Getenv("RELAY_E2E_REQUIRE_SERVERS") == "1" }

// missingServer fails the test when servers are required, else skips it.
func missingServer(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if serversRequired() {
		t.Fatalf("%s (RELAY_E2E_REQUIRE_SERVERS=1)", msg)
	}
	t.Skip(msg)
}

// sbinPath finds a program on PATH or in the sbin directories.
func sbinPath(name string) (string, error) { return realserver.SbinPath(name) }

// startVsftpd starts a vsftpd on 127.0.0.1 with its own config, root and
// ports, waits until its port accepts, and registers t.Cleanup(Stop).
func startVsftpd(t testing.TB, o ftpOptions) *ftpServer {
	t.Helper()
	v, err := realserver.StartVsftpd(realserver.VsftpdOptions{TLS: o.TLS, Logf: t.Logf})
	switch {
	case errors.Is(err, realserver.ErrNotInstalled):
		missingServer(t, "vsftpd not installed; scripts/test.sh installs it")
	case errors.Is(err, realserver.ErrNotRoot):
		missingServer(t, "vsftpd tests need root (useradd %s, chown of the FTP root)", ftpUser)
	case err != nil:
		t.Fatal(err)
	}
	s := &ftpServer{Vsftpd: v, t: t}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vsftpd on 127.0.0.1:%d (%s), log tail:\n%s", s.Port, s.TLS, s.LogTail())
		}
	})
	t.Cleanup(s.Stop)
	return s
}

// Stop stops this vsftpd and every connection it serves (by PID, SIGKILL
// after 5s) and waits. It may be called any number of times.
func (s *ftpServer) Stop() {
	if err := s.Vsftpd.Stop(); err != nil {
		s.t.Error(err)
	}
}

// Start starts the server again on the same port with the same config, after
// Stop. It does nothing while the server runs.
func (s *ftpServer) Start() {
	s.t.Helper()
	if err := s.Vsftpd.Start(); err != nil {
		s.t.Fatalf("vsftpd restart on %s: %v\n%s", s.Addr(), err, s.LogTail())
	}
}

// TLSConfig is a client config that trusts CAFile, for TLS servers; nil for
// plain ones. It has the session cache and ServerName that vsftpd's
// require_ssl_reuse needs.
func (s *ftpServer) TLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	c, err := s.Vsftpd.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Dial connects with jlaffaye/ftp in the server's TLS mode and logs in; the
// connection is closed at cleanup.
func (s *ftpServer) Dial(t testing.TB) *ftp.ServerConn {
	t.Helper()
	c, err := s.Vsftpd.DialNoLogin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Quit() })
	if err := c.Login(s.User, s.Password); err != nil {
		t.Fatalf("ftp login %s (%s): %v", s.Addr(), s.TLS, err)
	}
	return c
}

// WriteFile puts a file under Root as the FTP user would own it (parent
// directories too), so the server can rename and delete it.
func (s *ftpServer) WriteFile(t testing.TB, rel string, data []byte) {
	t.Helper()
	if err := s.Vsftpd.WriteFile(rel, data); err != nil {
		t.Fatal(err)
	}
}

// TestVsftpdHarness checks the harness itself against each TLS mode: login,
// mkdir, upload, list, rename, delete, a Cyrillic name, and a stop/start on
// the same port.
func TestVsftpdHarness(t *testing.T) {
	for _, mode := range []string{"none", "explicit", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			s := startVsftpd(t, ftpOptions{TLS: mode})
			if s.TLS != "none" && s.CAFile == "" {
				t.Fatal("TLS server without CAFile")
			}
			if want := fmt.Sprintf("ftp://%s@127.0.0.1:%d/in/x.xml", ftpUser, s.Port); s.URL("in/x.xml") != want {
				t.Fatalf("URL = %q, want %q", s.URL("in/x.xml"), want)
			}
			c := s.Dial(t)

			if err := c.MakeDir("in"); err != nil {
				t.Fatalf("MakeDir: %v", err)
			}
			if fi, err := os.Stat(filepath.Join(s.Root, "in")); err != nil || !fi.IsDir() {
				t.Fatalf("in/ not on disk: %v", err)
			}
			body := []byte("<?xml version=\"1.0\"?>\n<Message>" + strings.Repeat("данные ", 5000) + "</Message>\n")
			if err := c.Stor("in/.upload.tmp", bytes.NewReader(body)); err != nil {
				t.Fatalf("Stor: %v", err)
			}
			entries, err := c.List("in")
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			// vsftpd hides dot-files from LIST.
			for _, e := range entries {
				if e.Name == ".upload.tmp" {
					t.Fatalf("LIST shows a dot-file: %+v", e)
				}
			}
			onDisk := func(rel string) []byte {
				t.Helper()
				b, err := os.ReadFile(filepath.Join(s.Root, filepath.FromSlash(rel)))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			if !bytes.Equal(onDisk("in/.upload.tmp"), body) {
				t.Fatal("uploaded bytes differ on disk")
			}

			name := "Message_ЦО_ОП.xml"
			if err := c.Rename("in/.upload.tmp", "in/"+name); err != nil {
				t.Fatalf("Rename: %v", err)
			}
			if !bytes.Equal(onDisk("in/"+name), body) {
				t.Fatal("renamed file differs on disk")
			}
			entries, err = c.List("in")
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			found := false
			for _, e := range entries {
				if e.Name == name && e.Type == ftp.EntryTypeFile && e.Size == uint64(len(body)) {
					found = true
				}
			}
			if !found {
				t.Fatalf("LIST in/ = %v, want %s of %d bytes", entryNames(entries), name, len(body))
			}
			r, err := c.Retr("in/" + name)
			if err != nil {
				t.Fatalf("Retr: %v", err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("Retr %s: %d bytes, err %v", name, len(got), err)
			}

			// A file the test puts on disk is served and can be removed.
			s.WriteFile(t, "out/Message_ОП_ЦО.xml", []byte("<Message/>"))
			r, err = c.Retr("out/Message_ОП_ЦО.xml")
			if err != nil {
				t.Fatalf("Retr of a file put on disk: %v", err)
			}
			got, _ = io.ReadAll(r)
			r.Close()
			if string(got) != "<Message/>" {
				t.Fatalf("Retr of a file put on disk = %q", got)
			}
			if err := c.Delete("out/Message_ОП_ЦО.xml"); err != nil {
				t.Fatalf("Delete of a file put on disk: %v", err)
			}

			if err := c.Delete("in/" + name); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := os.Stat(filepath.Join(s.Root, "in", name)); !os.IsNotExist(err) {
				t.Fatalf("deleted file still on disk: %v", err)
			}

			// Down: the port refuses and the logged-in session is gone too.
			s.Stop()
			s.Stop() // idempotent
			if conn, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
				conn.Close()
				t.Fatal("port still accepts after Stop")
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial after Stop: %v, want connection refused", err)
			}
			if err := c.NoOp(); err == nil {
				t.Fatal("session still answers after Stop")
			}

			// Back on the same port.
			port := s.Port
			s.Start()
			if s.Port != port {
				t.Fatalf("restarted on port %d, want %d", s.Port, port)
			}
			c2 := s.Dial(t)
			if _, err := c2.List("in"); err != nil {
				t.Fatalf("List after restart: %v", err)
			}
		})
	}
}

func entryNames(es []*ftp.Entry) []string {
	var n []string
	for _, e := range es {
		n = append(n, e.Name)
	}
	return n
}
