package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPushSmoke runs the push scenario at a toy size so that it keeps
// working; the numbers are not looked at.
func TestPushSmoke(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "relay")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/relay1c/relay/cmd/relay").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/relay: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"-q", "-relay-bin", bin, "-dir", t.TempDir(), "-timeout", "2m", "-scenario", "push", "-push-messages", "60", "-channels", "6", "-push-size", "2KiB", "-push-concurrency", "4"}
	if rc := run(args, &stdout, &stderr); rc != 0 {
		t.Fatalf("bench %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, rc, stdout.String(), stderr.String())
	}
	for _, w := range []string{"push: 60 messages", "baseline", "relay / baseline:"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, stdout.String())
		}
	}
}
