package main

import (
	"bytes"
	"os"
	"path/filepath"
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

// TestThroughputSmokeLatestProfiled: the same in latest mode (the relay may
// supersede, so its messages/s counts only the messages written) with a CPU
// profile, which comes from an extra relay run that the table does not
// count.
func TestThroughputSmokeLatestProfiled(t *testing.T) {
	var stdout, stderr bytes.Buffer
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	args := []string{"-q", "-dir", t.TempDir(), "-timeout", "2m", "-scenario", "throughput", "-messages", "40", "-channels", "4", "-size", "2048",
		"-mode", "latest", "-floor=false", "-cpuprofile", prof}
	if rc := run(args, &stdout, &stderr); rc != 0 {
		t.Fatalf("bench %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, rc, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "of an extra relay run after the rounds, not counted") {
		t.Errorf("output does not say the profile is of an extra run:\n%s", stdout.String())
	}
	if fi, err := os.Stat(prof); err != nil || fi.Size() == 0 {
		t.Errorf("no CPU profile written: %v", err)
	}
}
