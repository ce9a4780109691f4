package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// kindChecker accepts dir and refuses everything else, like a registry that
// only has dir; it also requires a path.
type kindChecker struct{}

func (kindChecker) CheckEndpoint(role string, e *Endpoint) []error {
	if e.Kind != "dir" {
		return []error{errors.New(e.Kind + " endpoints are not available")}
	}
	if e.Options.Value == "" && len(e.Options.Content) == 0 {
		return []error{errors.New("path: missing")}
	}
	return nil
}

func TestProblems(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string // each must appear as a whole line prefix
	}{
		{"ok", "nodes:\n  A:\n    pickup: { dir: ./a }\n    deliver: { dir: ./b }\n", nil},
		{"no nodes", "relay: { id: x }\n", []string{"nodes: no nodes defined"}},
		{"bad mode", "nodes:\n  A:\n    mode: fastest\n    deliver: { dir: ./b }\n", []string{`nodes.A.mode: "fastest" is not latest or sequential`}},
		{"empty node", "nodes:\n  A: {}\n", []string{"nodes.A: has neither pickup nor deliver"}},
		{"kind refused", "nodes:\n  SHOP1:\n    pickup: { ftp: { url: x } }\n", []string{"nodes.SHOP1.pickup.ftp: ftp endpoints are not available"}},
		{"after on deliver", "nodes:\n  A:\n    deliver: { dir: ./b, after: keep }\n", []string{"nodes.A.deliver.after: after applies to pickups only"}},
		{"bad listen", "relay: { listen: nowhere }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.listen: "nowhere" is not host:port`}},
		{"bad env name", "relay: { api_token_env: 'MY TOKEN' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.api_token_env: "MY TOKEN" is not an environment variable name`}},
		{"creds without url", "nats: { creds_file: /x }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats: creds_file and tls apply to an external server"}},
		{"leaf ok", "relay: { id: office1 }\nnats: { leaf: { url: 'nats-leaf://hq.example:7422', creds_file: /x } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", nil},
		{"leaf with url", "nats: { url: 'nats://a:4222', leaf: { url: 'nats-leaf://hq:7422' } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.leaf: a leaf node is the embedded server"}},
		{"leaf bad url", "nats: { leaf: { url: 'http://hq:7422' } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.leaf.url: "http://hq:7422" is not nats-leaf://host:port`}},
		{"replicas embedded", "nats: { replicas: 3 }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.replicas: applies to an external cluster"}},
		{"replicas range", "nats: { url: 'nats://a:4222', replicas: 7 }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.replicas: 7 is not between 1 and 5"}},
		{"lease too short", "relay: { lease_ttl: 100ms }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"relay.lease_ttl: 100ms is shorter than 1s"}},
		{"listen port not a port", "relay: { listen: '127.0.0.1:99999' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.listen: "127.0.0.1:99999" is not host:port`}},
		{"listen port a service name", "relay: { listen: 'localhost:http' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", nil},
		{"nats listen port not a number", "nats: { listen: '127.0.0.1:nats' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.listen: "127.0.0.1:nats" is not host:port`}},
		{"bad zip password env", "nodes:\n  A:\n    zip_password_env: 'A PW'\n    deliver: { dir: ./a }\n", []string{`nodes.A.zip_password_env: "A PW" is not an environment variable name`}},
		{"node token shared", "nodes:\n  A:\n    api_token_env: T\n  B:\n    api_token_env: T\n", []string{`nodes.B.api_token_env: "T" is also the token of nodes.A`}},
		{"node token is the operator's", "relay: { api_token_env: T }\nnodes:\n  A:\n    api_token_env: T\n", []string{`nodes.A.api_token_env: "T" is also the token of relay.api_token_env`}},
		{"several at once", "relay: { listen: x }\nnodes:\n  A:\n    mode: m\n    pickup: { imap: {} }\n", []string{"relay.listen:", "nodes.A.mode:", "nodes.A.pickup.imap:"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.Problems(kindChecker{})
			if len(got) != len(c.want) {
				t.Fatalf("got %d problems %q, want %d", len(got), got, len(c.want))
			}
			for i, w := range c.want {
				if !strings.HasPrefix(got[i], w) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], w)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		"":                                "empty",
		"relay: { idd: x }":               "field idd not found",
		"nodes:\n  A:\n    pickup: ./x\n": "an endpoint is a mapping",
		"nodes:\n  A:\n    pickup: {}\n":  "names no kind",
		"nodes:\n  A:\n    pickup: { dir: a, ftp: b }\n":         "two kinds",
		"nodes:\n  A:\n    pickup: { dir: a, after: shred }\n":   `"shred" is not delete`,
		"nodes:\n  A:\n    pickup: { dir: a, after: 'move:' }\n": "is not delete",
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want error containing %q", in, err, want)
		}
	}
}

func TestAfterAndDefaults(t *testing.T) {
	cfg, err := Parse([]byte("nodes:\n  A:\n    pickup: { dir: a, after: 'move:sent' }\n  B:\n    relay: other\n    deliver: { dir: b }\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Nodes["A"].Pickup.After; a.Action != AfterMove || a.Folder != "sent" || a.String() != "move:sent" {
		t.Errorf("after = %+v", a)
	}
	if cfg.Nodes["A"].Mode != ModeLatest || cfg.Relay.ID != "relay" || cfg.Relay.Listen != "127.0.0.1:8088" {
		t.Errorf("defaults not applied: %+v %+v", cfg.Relay, cfg.Nodes["A"])
	}
	if !cfg.Serves(cfg.Nodes["A"]) || cfg.Serves(cfg.Nodes["B"]) {
		t.Error("Serves: nodes without relay are served, nodes of another relay are not")
	}
}

// TestShippedRoutingYAML: the routing.yaml at the repository root is valid.
func TestShippedRoutingYAML(t *testing.T) {
	cfg, err := Load("../routing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Problems(kindChecker{}); len(p) > 0 {
		t.Fatalf("shipped routing.yaml: %q", p)
	}
	if len(cfg.Nodes) < 3 {
		t.Fatalf("shipped routing.yaml has %d nodes, want 3", len(cfg.Nodes))
	}
	if got := cfg.Resolve("./data"); got != "../data" {
		t.Errorf("Resolve relative to the config's folder: %q", got)
	}
}

// The sender's archive password comes first, then the addressee's; unset
// and repeated ones are left out.
func TestZipPasswords(t *testing.T) {
	cfg, err := Parse([]byte(`nodes:
  HQ: { zip_password_env: RELAY_T_PW_HQ, deliver: { dir: ./hq } }
  A: { zip_password_env: RELAY_T_PW_A, deliver: { dir: ./a } }
  B: { zip_password_env: RELAY_T_PW_B, deliver: { dir: ./b } }
  C: { deliver: { dir: ./c } }
`))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("RELAY_T_PW_HQ", "hq")
	t.Setenv("RELAY_T_PW_A", "a")
	t.Setenv("RELAY_T_PW_B", "")
	for _, c := range []struct {
		from, to string
		want     []string
	}{
		{"HQ", "A", []string{"hq", "a"}},
		{"A", "HQ", []string{"a", "hq"}},
		{"HQ", "B", []string{"hq"}}, // B's variable is empty
		{"C", "A", []string{"a"}},
		{"C", "X", nil},
	} {
		if got := cfg.ZipPasswords(c.from, c.to); !slices.Equal(got, c.want) {
			t.Errorf("%s → %s: %q, want %q", c.from, c.to, got, c.want)
		}
	}
	t.Setenv("RELAY_T_PW_A", "hq")
	if got := cfg.ZipPasswords("HQ", "A"); !slices.Equal(got, []string{"hq"}) {
		t.Errorf("same password twice: %q", got)
	}
}
