package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestThroughputSmoke runs the throughput scenario (baseline, floor and the
// in-process relay) at a toy size so that it keeps working; the numbers are
// not looked at (the run fails if a side loses or corrupts a message).
func TestThroughputSmoke(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"-q", "-dir", t.TempDir(), "-timeout", "2m", "-scenario", "throughput", "-messages", "40", "-channels", "4", "-size", "2048"}
	if rc := run(args, &stdout, &stderr); rc != 0 {
		t.Fatalf("bench %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, rc, stdout.String(), stderr.String())
	}
	for _, w := range []string{"throughput: 40 messages", "floor messages/s", "floor CPU per message"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, stdout.String())
		}
	}
}
