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

// TestMailSmoke runs the mail and mailbig scenarios at toy sizes against a
// real postfix + dovecot, so that the bench keeps working; the numbers are
// not looked at. It needs root, postfix and dovecot (dovecot-imapd,
// dovecot-lmtpd): without them it skips, or fails when
// RELAY_E2E_REQUIRE_SERVERS=1 (scripts/test.sh).
func TestMailSmoke(t *testing.T) {
	if err := mailAvailable(); err != nil {
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") == "1" && (errors.Is(err, realserver.ErrMailNotInstalled) || errors.Is(err, realserver.ErrMailNotRoot)) {
			t.Fatalf("%v (RELAY_E2E_REQUIRE_SERVERS=1)", err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(t.TempDir(), "relay")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/relay1c/relay/cmd/relay").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/relay: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		// Two messages per channel: the bench writes a channel's No 2 once
		// No 1 is in B's inbox, so no version of a file is replaced before
		// the watcher reads it. With five per channel, B can take No k+1
		// before No k (the mailbox keeps no order), hold it, and deliver it
		// right after No k: the watcher then reads only No k+1 and counts
		// 9 of 10 with nothing lost (CI, 2026-11-27).
		{"mail", []string{"-scenario", "mail", "-mail-messages", "10", "-mail-channels", "5", "-mail-size", "10KiB"},
			[]string{"mail: 10 messages", "delivered, sha256 ok 10 10", "relay A CPU", "relay B CPU"}},
		// 2 MiB through mails of at most 256 KiB: 12 parts.
		{"mailbig", []string{"-scenario", "mailbig", "-mail-bigsize", "2MiB", "-mail-max-size", "256KiB"},
			[]string{"mailbig: one 2.0 MiB message", "parts (mails) 12 (12 seen in Maildir) 12"}},
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
			if n := strings.Count(out, "target < 150 MiB: OK"); n != 2 {
				t.Errorf("want both relays' peak RSS under 150 MiB, found %d OK:\n%s", n, stdout.String())
			}
		})
	}
}
