package e2e

// A real nginx (Debian's /usr/sbin/nginx) started by a test on 127.0.0.1,
// for the http endpoint tests: a WebDAV folder that takes PUT under /dav/
// (and under /auth/ with basic auth), /fail/ answering 503, /gone/ 404 and
// /1c-error/ 1C's error reply; one server per test, stopped by PID in
// t.Cleanup.
//
// This file is the testing.TB face of test/realserver (StartNginx), which
// starts, stops and configures the server, and whose header in nginx.go
// lists the nginx facts all this relies on. ng.Root("dav/x/Message_A_B.xml")
// is where a PUT to ng.URL("dav/x/Message_A_B.xml") lands on disk.

import (
	"errors"
	"testing"

	"github.com/relay1c/relay/test/realserver"
)

// startNginx starts an nginx on 127.0.0.1 with its own config, root and
// port, waits until it listens, and registers t.Cleanup(Close), printing
// its log tail first if the test failed. A missing nginx skips the test, or
// fails it under RELAY_E2E_REQUIRE_SERVERS=1.
func startNginx(t testing.TB) *realserver.Nginx {
	t.Helper()
	if _, err := sbinPath("nginx"); err != nil {
		missingServer(t, "nginx not installed; scripts/test.sh installs it")
	}
	ng, err := realserver.StartNginx(realserver.NginxOptions{Logf: t.Logf})
	switch {
	case errors.Is(err, realserver.ErrNginxNotInstalled):
		missingServer(t, "%v; scripts/test.sh installs it", err)
	case err != nil:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx on %s, log tail:\n%s", ng.Addr(), ng.LogTail())
		}
		if err := ng.Close(); err != nil {
			t.Error(err)
		}
	})
	return ng
}
