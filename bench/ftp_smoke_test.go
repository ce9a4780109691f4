package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relay1c/relay/test/realserver"
)

// TestFTPSmoke runs the ftp and ftpbig scenarios at toy sizes against a real
// vsftpd, so that the bench keeps working; the numbers are not looked at.
// It needs root, vsftpd and curl: without vsftpd or root it skips, or fails
// when RELAY_E2E_REQUIRE_SERVERS=1 (scripts/test.sh); without curl it skips.
func TestFTPSmoke(t *testing.T) {
	if err := ftpAvailable(); err != nil {
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") == "1" && (errors.Is(err, realserver.ErrNotInstalled) || errors.Is(err, realserver.ErrNotRoot)) {
			t.Fatalf("%v (RELAY_E2E_REQUIRE_SERVERS=1)", err)
		}
		t.Skip(err)
	}
	// vsftpd's user must traverse the folders: t.TempDir() is 0700.
	dir, err := os.MkdirTemp("", "relay-bench-smoke-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "relay")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/relay1c/relay/cmd/relay").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/relay: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"ftp", []string{"-scenario", "ftp", "-ftp-messages", "12", "-ftp-channels", "3", "-ftp-size", "8KiB", "-ftp-baseline", "batch,perfile"},
			[]string{"ftp: 12 messages", "seen in b/in, sha256 ok  12", "curl perfile"}},
		{"ftpbig", []string{"-scenario", "ftpbig", "-bigsize", "16MiB"},
			[]string{"ftpbig: one 16.0 MiB message", "target < 150 MiB: OK"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"-q", "-relay-bin", bin, "-dir", dir, "-timeout", "2m"}, tc.args...)
			if rc := run(args, &stdout, &stderr); rc != 0 {
				t.Fatalf("bench %v: exit %d\nstdout:\n%s\nstderr:\n%s", tc.args, rc, stdout.String(), stderr.String())
			}
			out := strings.Join(strings.Fields(stdout.String()), " ")
			for _, w := range tc.want {
				if !strings.Contains(out, strings.Join(strings.Fields(w), " ")) {
					t.Errorf("output lacks %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}
