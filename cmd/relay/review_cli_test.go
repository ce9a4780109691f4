package main

import (
	"strings"
	"testing"
)

// TestNullNodeCodeRefused: a node whose code YAML reads as null (NULL, Null,
// null, ~ — a 1C node code is any text) vanished from nodes without a
// word: yaml.v3 skips a map entry whose key does not decode into a string;
// validate said OK (one node fewer), and every message to or from that
// node became a dead letter (found by review). It is a problem now.
func TestNullNodeCodeRefused(t *testing.T) {
	cfg := writeConfig(t, "nodes:\n  ЦО:\n    deliver: { dir: ./co }\n  NULL:\n    pickup: { dir: ./null/out }\n    deliver: { dir: ./null/in }\n")
	out, stderr, err := run(t, "validate", "-c", cfg)
	if err == nil && !strings.Contains(out, "OK, 2 node(s)") {
		t.Fatalf("routing.yaml with nodes ЦО and NULL: validate exits 0 and says %q (stderr %q): node NULL was dropped silently", strings.TrimSpace(out), stderr)
	}
}

// TestListenSignedPortRefused: relay.listen 127.0.0.1:+38999 passes validate
// (strconv.Atoi takes the sign) and relay run listens on 38999, but every
// command that talks to the relay failed building its URL from it
// (net/url: invalid port; found by review). Digits only now.
func TestListenSignedPortRefused(t *testing.T) {
	cfg := writeConfig(t, "relay: { listen: '127.0.0.1:+38999' }\nnodes:\n  A:\n    deliver: { dir: ./a }\n")
	if _, _, err := run(t, "validate", "-c", cfg); err == nil {
		_, _, serr := run(t, "status", "-c", cfg)
		t.Fatalf("validate accepted relay.listen 127.0.0.1:+38999; status with it: %v", serr)
	}
}

// TestCompletionUnknownShellFails: `relay completion bsah` (a typo of
// bash) printed the completion command's help on stdout and exited 0, as
// `relay dead retyr` did before it was fixed: `relay completion bsah >
// /etc/bash_completion.d/relay && echo installed` installed the help text
// as a completion script and said so (found by review).
func TestCompletionUnknownShellFails(t *testing.T) {
	out, _, err := run(t, "completion", "bsah")
	if err == nil {
		t.Fatalf("relay completion bsah exited 0; it printed on stdout:\n%s", out)
	}
}
