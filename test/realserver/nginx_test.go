package realserver

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startNginxT starts an Nginx for t, closed (and its log tail printed on
// failure) at cleanup. A missing nginx or curl skips the test, or fails it
// under RELAY_E2E_REQUIRE_SERVERS=1.
func startNginxT(t *testing.T) *Nginx {
	t.Helper()
	skip := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s (RELAY_E2E_REQUIRE_SERVERS=1)", msg)
		}
		t.Skip(msg)
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err != nil {
		skip("/usr/sbin/nginx missing: install nginx (scripts/test.sh does)")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		skip("curl missing (the independent HTTP client of this test)")
	}
	start := time.Now()
	n, err := StartNginx(NginxOptions{Logf: t.Logf})
	switch {
	case errors.Is(err, ErrNginxNotInstalled):
		skip("%v", err)
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("StartNginx took %v: port %d, master %d", time.Since(start).Round(time.Millisecond), n.Port, n.PID())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx log tail:\n%s", n.LogTail())
		}
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// curlCode runs curl with args and returns the HTTP status it got.
func curlCode(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"--noproxy", "*", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v: %s", args, err, out)
	}
	return string(out)
}

// TestNginx checks the WebDAV target the http e2e tests use: PUT with curl
// (an independent client) stores the exact bytes under the decoded
// Cyrillic name, overwrites, creates folders; /auth/ wants the password;
// /fail/ and /gone/ answer 503 and 404, /1c-error/ 1C's error reply; Stop leaves no process and a
// refusing port; Start comes back on the same port.
func TestNginx(t *testing.T) {
	n := startNginxT(t)
	data := bytes.Repeat([]byte("<данные/>\n"), 200_000) // 3.2 MB: above nginx's default 1 MiB body limit
	f := filepath.Join(t.TempDir(), "body.xml")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	name := "Message_ЦО_ОП.xml"
	u := n.URL("dav/in/sub/" + name)
	if !strings.Contains(u, "Message_%D0%A6%D0%9E_%D0%9E%D0%9F.xml") {
		t.Fatalf("URL %s is not percent-encoded", u)
	}
	if c := curlCode(t, "-T", f, u); c != "201" {
		t.Fatalf("PUT new file: %s, want 201", c)
	}
	got, err := os.ReadFile(n.Root("dav/in/sub/" + name))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file on disk: %d bytes, %v; want the %d bytes sent", len(got), err, len(data))
	}
	if c := curlCode(t, "-T", f, u); c != "204" {
		t.Errorf("PUT over an existing file: %s, want 204", c)
	}
	out, err := exec.Command("curl", "--noproxy", "*", "-sS", "--max-time", "10", u).Output()
	if err != nil || !bytes.Equal(out, data) {
		t.Errorf("GET back: %d bytes, %v", len(out), err)
	}
	if c := curlCode(t, "-X", "OPTIONS", n.URL("dav/in/")); c != "405" {
		t.Errorf("OPTIONS on the folder: %s, want 405 (no dav-ext)", c)
	}
	if c := curlCode(t, "-X", "POST", "--data-binary", "@"+f, n.URL("dav/in/x.xml")); c != "404" {
		t.Errorf("POST: %s, want 404 (no WebDAV method)", c)
	}

	authURL := n.URL("auth/in/" + name)
	if c := curlCode(t, "-T", f, authURL); c != "401" {
		t.Errorf("PUT to /auth/ without credentials: %s, want 401", c)
	}
	if c := curlCode(t, "-u", NginxUser+":wrong", "-T", f, authURL); c != "401" {
		t.Errorf("PUT to /auth/ with a wrong password: %s, want 401", c)
	}
	if c := curlCode(t, "-u", NginxUser+":"+NginxPassword, "-T", f, authURL); c != "201" {
		t.Errorf("PUT to /auth/ with the password: %s, want 201", c)
	}
	if _, err := os.Stat(n.Root("auth/in/" + name)); err != nil {
		t.Errorf("authenticated PUT not on disk: %v", err)
	}
	if c := curlCode(t, "-T", f, n.URL("fail/x.xml")); c != "503" {
		t.Errorf("/fail/: %s, want 503", c)
	}
	if c := curlCode(t, "-T", f, n.URL("gone/x.xml")); c != "404" {
		t.Errorf("/gone/: %s, want 404", c)
	}

	out, err = exec.Command("curl", "--noproxy", "*", "-sS", "--max-time", "10", "-T", f, n.URL("1c-error/exchange")).Output()
	if err != nil || string(out) != OneCErrorReply {
		t.Errorf("/1c-error/: %q, %v; want %q", out, err, OneCErrorReply)
	}

	master := n.PID()
	n.Stop()
	n.Stop() // idempotent
	if c, err := net.DialTimeout("tcp", n.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("port still accepts after Stop")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Stop: %v, want connection refused", err)
	}
	for _, p := range ProcTable() {
		if p.PGID == master && p.State != 'Z' {
			t.Errorf("process %d of nginx %d still there after Stop", p.PID, master)
		}
	}

	port := n.Port
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if n.Port != port || n.PID() == master {
		t.Fatalf("restart: port %d (was %d), master %d (was %d)", n.Port, port, n.PID(), master)
	}
	if c := curlCode(t, "-T", f, u); c != "204" {
		t.Errorf("PUT after restart: %s, want 204", c)
	}
}
