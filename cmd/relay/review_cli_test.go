package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/pipeline"
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

// TestDeadBadIDSaysWhat: `relay dead show abc` said `strconv.ParseUint:
// parsing "abc": invalid syntax` (found by a walk through the quick start);
// it says what an id is now.
func TestDeadBadIDSaysWhat(t *testing.T) {
	cfg := writeConfig(t, "nodes:\n  A:\n    deliver: { dir: ./a }\n")
	for _, id := range []string{"abc", "0"} {
		_, stderr, err := run(t, "dead", "show", id, "-c", cfg)
		if err == nil || !strings.Contains(stderr, "not a dead letter's id") || strings.Contains(stderr, "strconv") {
			t.Errorf("dead show %s: %v, stderr %q", id, err, stderr)
		}
	}
}

// TestRunListsEveryProblem: relay run refused a routing.yaml a round at a
// time (what did not decode first, the rest after it was fixed), where
// validate lists every problem at once (found by a walk through the quick
// start). run lists them all too, and starts nothing.
func TestRunListsEveryProblem(t *testing.T) {
	cfg := writeConfig(t, "relay: { listen: '127.0.0.1:1', ack_alert_after: x }\nnodes:\n  A:\n    delivr: { dir: ./a }\n")
	_, stderr, err := run(t, "run", "-c", cfg)
	if err == nil {
		t.Fatal("run started on a routing.yaml with problems")
	}
	for _, want := range []string{"relay.ack_alert_after", "nodes.A.delivr", "nodes.A: has neither", "3 problem(s)"} {
		if !strings.Contains(stderr+err.Error(), want) {
			t.Errorf("run's refusal %q %v lacks %q", stderr, err, want)
		}
	}
}

// TestMissingConfigSaysHow: a command run away from routing.yaml said only
// "open routing.yaml: no such file or directory" (found by a walk through
// the quick start); it says how to name the file, and, when -c named one
// that is not there, not to use -c (a later walk).
func TestMissingConfigSaysHow(t *testing.T) {
	_, stderr, err := run(t, "status") // no routing.yaml in the package's folder
	if err == nil || !strings.Contains(stderr+err.Error(), "give its path with -c") {
		t.Fatalf("status without routing.yaml: %v, stderr %q", err, stderr)
	}
	// Also -c routing.yaml, the default's value (found by review).
	t.Chdir(t.TempDir())
	for _, path := range []string{t.TempDir() + "/routing.yaml", "routing.yaml"} {
		_, stderr, err = run(t, "status", "-c", path)
		if err == nil || !strings.Contains(stderr+err.Error(), "(the path given with -c)") {
			t.Fatalf("status -c %s, not there: %v, stderr %q", path, err, stderr)
		}
	}
}

// TestUnauthorizedNamesTheVariable: with relay.api_token_env set and the
// variable not set in the operator's shell, a command said only "missing
// bearer token" (found walking through the quick start).
func TestUnauthorizedNamesTheVariable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: "missing bearer token"})
	}))
	t.Cleanup(srv.Close)
	cfg := writeConfig(t, "relay: { id: hq, listen: '"+srv.Listener.Addr().String()+"', api_token_env: RELAY_TEST_NO_SUCH_TOKEN }\nnodes:\n  A:\n    deliver: { dir: ./a }\n")
	_, _, err := run(t, "status", "-c", cfg)
	if err == nil || !strings.Contains(err.Error(), "missing bearer token (set RELAY_TEST_NO_SUCH_TOKEN") {
		t.Fatalf("status refused for want of a token: %v", err)
	}
}

// TestStatusCountsDeadLetters: a file refused at pickup (no header, an
// unknown node) has no channel row, and relay status showed nothing of it
// (found by a walk through the quick start). A line under the table counts
// the dead letters (of NODE, with it) and names the newest.
func TestStatusCountsDeadLetters(t *testing.T) {
	letters := []pipeline.DeadLetter{
		{Seq: 1, Node: "SHOP1", Stage: pipeline.StagePickup, Reason: "no header", FileName: "Message_SHOP1_CO.xml"},
		{Seq: 2, Node: "A", Stage: pipeline.StagePickup, Reason: "unknown node \"CO\"", FileName: "Message_A_CO.xml"},
	}
	cfg := fakeAPI(t, map[string]any{
		"/api/v1/channels": []api.ChannelView{},
		"/api/v1/nodes":    []api.NodeView{{Code: "A", Served: true, Deliver: "dir"}},
		"/api/v1/dead":     letters,
	})
	out, _, err := run(t, "status", "-c", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "2 dead letter(s), the newest: Message_A_CO.xml: unknown node") {
		t.Errorf("status without the dead letters' line:\n%s", out)
	}
	if out, _, err = run(t, "status", "-c", cfg, "A"); err != nil || !strings.Contains(out, "1 dead letter(s)") {
		t.Errorf("status A (%v) does not count A's one letter:\n%s", err, out)
	}
}
