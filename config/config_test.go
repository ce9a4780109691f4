package config

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/relay1c/relay/exchange"

	"gopkg.in/yaml.v3"
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
		{"overwrite_unread sequential", "nodes:\n  A:\n    mode: sequential\n    overwrite_unread: true\n    deliver: { dir: ./b }\n", nil},
		{"overwrite_unread latest", "nodes:\n  A:\n    overwrite_unread: true\n    deliver: { dir: ./b }\n", []string{"nodes.A.overwrite_unread: applies to a sequential node"}},
		{"empty node", "nodes:\n  A: {}\n", []string{"nodes.A: has neither pickup nor deliver"}},
		{"kind refused", "nodes:\n  SHOP1:\n    pickup: { ftp: { url: x } }\n", []string{"nodes.SHOP1.pickup.ftp: ftp endpoints are not available"}},
		{"after on deliver", "nodes:\n  A:\n    deliver: { dir: ./b, after: keep }\n", []string{"nodes.A.deliver.after: after applies to pickups only"}},
		{"bad listen", "relay: { listen: nowhere }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.listen: "nowhere" is not host:port`}},
		{"bad env name", "relay: { api_token_env: 'MY TOKEN' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.api_token_env: is not an environment variable name (value not shown`}},
		{"creds without url", "nats: { creds_file: /x }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats: creds_file, user, password_env, token_env and tls apply to an external server"}},
		{"user without url", "nats: { user: relay, password_env: NATS_PW }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats: creds_file, user, password_env, token_env and tls apply to an external server"}},
		{"user without password_env", "nats: { url: nats://h:4222, user: relay }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats: user and password_env go together"}},
		{"two ways to log in", "nats: { url: nats://h:4222, user: relay, password_env: NATS_PW, token_env: NATS_TOKEN }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats: one way to log in"}},
		{"bad token_env", "nats: { url: nats://h:4222, token_env: 'not a name' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.token_env: is not an environment variable name (value not shown`}},
		{"leaf ok", "relay: { id: office1 }\nnats: { leaf: { url: 'nats-leaf://hq.example:7422', creds_file: /x } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", nil},
		{"leaf with url", "relay: { id: office1 }\nnats: { url: 'nats://a:4222', leaf: { url: 'nats-leaf://hq:7422' } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.leaf: a leaf node is the embedded server"}},
		{"leaf bad url", "relay: { id: office1 }\nnats: { leaf: { url: 'http://hq:7422' } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.leaf.url: "http://hq:7422" is not nats-leaf://host:port`}},
		// Found by review: offices without an id shared one domain.
		{"leaf without id", "nats: { leaf: { url: 'nats-leaf://hq:7422' } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"relay.id: an office relay (nats.leaf) needs its own id"}},
		{"replicas embedded", "nats: { replicas: 3 }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.replicas: applies to an external cluster"}},
		{"replicas range", "nats: { url: 'nats://a:4222', replicas: 7 }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.replicas: 7 is not between 1 and 5"}},
		{"sync always", "nats: { sync: always }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", nil},
		{"sync every 10s", "nats: { sync: 10s }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", nil},
		{"sync neither", "nats: { sync: often }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.sync: "often" is neither a duration like 10s nor always`}},
		{"sync zero", "nats: { sync: 0s }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.sync: "0s" is neither`}},
		{"sync external", "nats: { url: 'nats://a:4222', sync: always }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.sync: only for the embedded server"}},
		{"lease too short", "relay: { lease_ttl: 100ms }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"relay.lease_ttl: 100ms is shorter than 1s"}},
		{"listen port not a port", "relay: { listen: '127.0.0.1:99999' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.listen: "127.0.0.1:99999" is not host:port`}},
		{"listen port a service name", "relay: { listen: 'localhost:http' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.listen: "localhost:http" is not host:port (port "http": a number`}},
		// Found by review: the commands could not find a port the kernel picked.
		{"listen port 0", "relay: { listen: '127.0.0.1:0' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`relay.listen: "127.0.0.1:0" is not host:port (port "0": a number from 1 to 65535)`}},
		{"nats listen port not a number", "nats: { listen: '127.0.0.1:nats' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.listen: "127.0.0.1:nats" is not host:port`}},
		{"max_xml_token too small", "relay: { max_xml_token: 512KiB }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"relay.max_xml_token: 512 KiB is not between 1MiB and 1GiB"}},
		{"max_xml_token too big", "relay: { max_xml_token: 2GiB }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"relay.max_xml_token: 2.0 GiB is not between 1MiB and 1GiB"}},
		// Found by review: nats-server listened on 4222.
		{"nats listen port 0", "nats: { listen: '127.0.0.1:0' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{`nats.listen: "127.0.0.1:0": port 0 would be nats-server's default 4222`}},
		{"nats listen any port", "nats: { listen: '127.0.0.1:-1' }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", nil},
		// Found by review: relay run failed on "open : no such file".
		{"tls cert without key", "nats: { url: 'tls://n.example:4222', tls: { ca_file: ca.pem, cert_file: relay.pem } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.tls: cert_file and key_file go together"}},
		{"leaf tls key without cert", "relay: { id: office1 }\nnats: { leaf: { url: 'tls://hq.example:7422', tls: { key_file: relay.key } } }\nnodes:\n  A:\n    deliver: { dir: ./b }\n", []string{"nats.leaf.tls: cert_file and key_file go together"}},
		{"bad zip password env", "nodes:\n  A:\n    zip_password_env: 'A PW'\n    deliver: { dir: ./a }\n", []string{`nodes.A.zip_password_env: is not an environment variable name (value not shown`}},
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
		"relay: { idd: x }":               "relay.idd: unknown key (field idd not found)",
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

// TestOptionsAliasesAndMergeKeys proves that YAML anchors, aliases and
// merge keys (<<) in endpoint options read as YAML defines them: the
// options are re-encoded alone for the strict decode, where an alias would
// lose its anchor ("unknown anchor") and a plain alias was refused by
// DecodeURLOrOptions. A key written in the mapping wins over a merged one.
func TestOptionsAliasesAndMergeKeys(t *testing.T) {
	const doc = `
nodes:
  SHOP1:
    pickup:
      ftp: &shop1 { url: "ftp://shop1@ftp.example:21/out", password_env: SHOP1_FTP_PASSWORD }
    deliver:
      ftp: { <<: *shop1, url: "ftp://shop1@ftp.example:21/in" }
  WH:
    pickup:  { dir: &whdir ./exchange/WH, after: &keep keep }
    deliver: { dir: *whdir }
  OP:
    pickup: { dir: ./exchange/OP, after: *keep }
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	type ftpOpts struct {
		URL         string `yaml:"url"`
		PasswordEnv string `yaml:"password_env"`
	}
	var o ftpOpts
	if err := DecodeOptions(&c.Nodes["SHOP1"].Deliver.Options, &o); err != nil {
		t.Errorf("deliver options with a merge key: %v", err)
	} else if o.URL != "ftp://shop1@ftp.example:21/in" || o.PasswordEnv != "SHOP1_FTP_PASSWORD" {
		t.Errorf("deliver options with a merge key = %+v", o)
	}
	var path string
	var dummy struct {
		Path string `yaml:"path"`
	}
	if err := DecodeURLOrOptions(&c.Nodes["WH"].Deliver.Options, &dummy, &path); err != nil {
		t.Errorf("deliver dir given as an alias: %v", err)
	} else if path != "./exchange/WH" {
		t.Errorf("deliver dir given as an alias = %q", path)
	}
	if a := c.Nodes["OP"].Pickup.After; a.Action != AfterKeep {
		t.Errorf("after given as an alias = %+v", a)
	}
}

// TestOptionsMergeKeyRules proves that resolving aliases and merge keys
// keeps the strict decode strict (an unknown key, even a merged one, and a
// key written twice are refused), follows YAML's precedence (the mapping's
// own key, then the earlier merged mapping), and refuses what cannot be
// resolved: an anchor inside itself, aliases that expand without end, a
// merge of something that is not a mapping.
func TestOptionsMergeKeyRules(t *testing.T) {
	type opts struct {
		A string `yaml:"a"`
		B string `yaml:"b"`
		C string `yaml:"c"`
	}
	decode := func(doc string) (opts, error) {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		var o opts
		err := DecodeOptions(root.Content[0].Content[len(root.Content[0].Content)-1], &o)
		return o, err
	}
	for _, c := range []struct {
		doc  string
		want opts
	}{
		{"x: &x { a: 1, b: 2 }\ny: { <<: *x, b: 3 }", opts{"1", "3", ""}},
		{"x: &x { a: 1, b: 2 }\ny: { b: 3, <<: *x }", opts{"1", "3", ""}},
		{"x: &x { a: 1 }\nz: &z { a: 2, b: 2 }\ny: { <<: [*x, *z], c: 3 }", opts{"1", "2", "3"}},
		{"x: &x { a: 1 }\nz: &z { <<: *x, b: 2 }\ny: { <<: *z }", opts{"1", "2", ""}},
	} {
		o, err := decode(c.doc)
		if err != nil || o != c.want {
			t.Errorf("%q = %+v, %v; want %+v", c.doc, o, err, c.want)
		}
	}
	for doc, want := range map[string]string{
		"x: &x { a: 1, typo: 2 }\ny: { <<: *x }":    "field typo not found",
		"x: &x { a: 1 }\ny: { <<: *x, a: 2, a: 3 }": `"a" already defined`,
		"y: &y { a: [ *y ] }":                       "contains itself",
		"x: &x [ 1 ]\ny: { <<: *x }":                "takes a mapping or a list of mappings",
		"y: { <<: { a: 1 }, '<<': { b: 2 } }":       "field << not found", // quoted, << is a plain key
		"x: &x { a: 1 }\ny: { <<: *x, <<: *x }":     "a second merge key",
		"a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d]\ny: { a: *e, b: *e, c: *e }": "aliases expand to more than",
	} {
		if _, err := decode(doc); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", doc, err, want)
		}
	}
}

// TestNATSURLRefusesSecrets proves that a user, password or token in
// nats.url or nats.leaf.url (each of several comma-separated URLs) is a
// validate problem pointing at the credentials file, without echoing the
// secret: secrets never sit in routing.yaml (DESIGN §4), as the ftp, mail
// and http adapters refuse a password in their url. An unparsable URL or
// a scheme nats.go does not speak is refused too; host:port without a
// scheme is read as nats.go reads it.
func TestNATSURLRefusesSecrets(t *testing.T) {
	const nodes = "nodes:\n  A:\n    deliver: { dir: ./b }\n"
	for name, c := range map[string]struct{ nats, want string }{
		"password":        {"{ url: 'nats://relay:s3cret@nats.example:4222' }", `nats.url: "nats://nats.example:4222" has a user, password or token in it: set nats.user with nats.password_env, nats.token_env, or nats.creds_file instead`},
		"token":           {"{ url: 'nats://s3cret@nats.example:4222' }", `nats.url: "nats://nats.example:4222" has a user, password or token`},
		"second of two":   {"{ url: 'nats://a:4222, tls://u:s3cret@b:4222' }", `nats.url: "tls://b:4222" has a user, password or token`},
		"slash in secret": {"{ url: 'nats://u:s3/cret@b:4222' }", `nats.url: "nats://b:4222" has a user, password or token`},
		"leaf password":   {"{ leaf: { url: 'nats-leaf://office1:s3cret@hq.example:7422' } }", `nats.leaf.url: "nats-leaf://hq.example:7422" has a user, password or token in it: put the credentials in a NATS credentials file named by nats.leaf.creds_file`},
		"scheme":          {"{ url: 'http://nats.example:4222' }", `nats.url: "http://nats.example:4222" is not nats://host:port`},
		"unparsable":      {"{ url: 'nats://nats example:4222' }", `nats.url: "nats://nats example:4222" is not nats://host:port`},
		// Found by review: nats.go connected to its default 127.0.0.1:4222.
		"no server":        {"{ url: ' , ' }", `nats.url: " , " names no server: leave it empty for the embedded server`},
		"blank":            {"{ url: ' ' }", `nats.url: " " names no server`},
		"no host":          {"{ url: 'nats://:4222' }", `nats.url: "nats://:4222" names no host`},
		"cluster":          {"{ url: 'nats://a:4222, tls://b:4222,wss://c' }", ""},
		"without a scheme": {"{ url: 'nats.example:4222' }", ""},
	} {
		cfg, err := Parse([]byte("relay: { id: office1 }\nnats: " + c.nats + "\n" + nodes))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		probs := cfg.Problems(kindChecker{})
		if c.want == "" {
			if len(probs) > 0 {
				t.Errorf("%s: %q", name, probs)
			}
			continue
		}
		if len(probs) != 1 || !strings.HasPrefix(probs[0], c.want) {
			t.Errorf("%s: %q, want one problem starting %q", name, probs, c.want)
		}
		if strings.Contains(strings.Join(probs, "\n"), "s3") {
			t.Errorf("%s: the problem shows the secret: %q", name, probs)
		}
	}
}

// TestNodeRelayIsARelayID proves that nodes.<code>.relay is held to the
// rules of relay.id: it names the relay, and so the JetStream domain, the
// node's messages are fetched from, and no relay can run with an id that
// has a space, '.', '*' or '>' (its own validate refuses it).
func TestNodeRelayIsARelayID(t *testing.T) {
	for _, id := range []string{"office.1", "office 1", "office*", "office>"} {
		doc := "relay: { id: hq }\nnodes:\n  A:\n    relay: '" + id + "'\n    deliver: { dir: ./a }\n  B:\n    relay: office-2\n    deliver: { dir: ./b }\n"
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		probs := c.Problems(kindChecker{})
		want := `nodes.A.relay: "` + id + `" is not a possible relay.id`
		if len(probs) != 1 || !strings.HasPrefix(probs[0], want) {
			t.Errorf("relay %q: %q, want one problem starting %q", id, probs, want)
		}
	}
}

// TestAfterWrittenTwice proves that `after` written twice in one endpoint
// is refused like every other key written twice, instead of the last one
// winning (`after: keep` then a stray `after: delete` deleted the sender's
// files).
func TestAfterWrittenTwice(t *testing.T) {
	c, err := Parse([]byte("nodes:\n  A:\n    pickup: { dir: ./a, after: keep, after: delete }\n"))
	if err == nil {
		t.Fatalf("after written twice accepted; the pickup will %s its sources", c.Nodes["A"].Pickup.After)
	}
	if want := "nodes.A.pickup.after: written twice"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}

// TestSizeDecimalComma proves that a size with a decimal comma (1,5GiB, as
// a Russian locale writes it) is refused with a hint to write '.', instead
// of being read as 15 GiB (humanize takes ',' for a thousands separator).
func TestSizeDecimalComma(t *testing.T) {
	c, err := Parse([]byte("relay:\n  max_message_size: 1,5GiB\nnodes:\n  A:\n    deliver: { dir: ./a }\n"))
	if err == nil {
		t.Fatalf("max_message_size: 1,5GiB accepted as %d bytes (%s)", int64(c.Relay.MaxMessageSize), c.Relay.MaxMessageSize)
	}
	if want := `relay.max_message_size: "1,5GiB" has a ',': write a fraction with '.'`; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
	c, err = Parse([]byte("relay:\n  max_message_size: 1.5GiB\nnodes:\n  A:\n    deliver: { dir: ./a }\n"))
	if err != nil || int64(c.Relay.MaxMessageSize) != 3<<29 {
		t.Fatalf("max_message_size: 1.5GiB = %v, %v; want 1.5 GiB", c, err)
	}
}

// TestSecondDocumentRefused proves that a routing.yaml with a second YAML
// document (a `---` and more after it) is refused: everything after the
// first was ignored, node B never served, while validate said OK. A '---'
// that starts the only document, or ends it with nothing after, is fine.
func TestSecondDocumentRefused(t *testing.T) {
	c, err := Parse([]byte("nodes:\n  A:\n    deliver: { dir: ./a }\n---\nnodes:\n  B:\n    deliver: { dir: ./b }\n"))
	if err == nil {
		t.Fatalf("a second YAML document was ignored silently; nodes = %v", c.NodeNames())
	}
	if want := "routing.yaml holds more than one YAML document (the second starts at line 4)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
	for _, in := range []string{"---\nnodes:\n  A:\n    deliver: { dir: ./a }\n", "nodes:\n  A:\n    deliver: { dir: ./a }\n---\n# old\n"} {
		if _, err := Parse([]byte(in)); err != nil {
			t.Errorf("Parse(%q): %v", in, err)
		}
	}
}

// TestParseReportsEveryError proves that decoding goes on past a value that
// does not decode: a bad duration, an unknown key and a bad after: are all
// reported, each with its path, and what did decode is returned for
// Problems to check.
func TestParseReportsEveryError(t *testing.T) {
	c, err := Parse([]byte("relay:\n  ack_alert_after: 10\n  lisen: x\nnodes:\n  A:\n    pickup: { dir: ./a, after: shred }\n"))
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T), want a *DecodeError", err, err)
	}
	want := []string{
		`relay.ack_alert_after: "10" is not a duration like 10s or 2m (line 2)`,
		"relay.lisen: unknown key (field lisen not found) (line 3)",
		`nodes.A.pickup.after: "shred" is not delete, move:<folder> or keep (line 6)`,
	}
	if !slices.Equal(de.Problems, want) {
		t.Errorf("problems:\n%q\nwant\n%q", de.Problems, want)
	}
	if c == nil || c.Nodes["A"] == nil || c.Nodes["A"].Pickup.Kind != "dir" {
		t.Fatalf("what decoded is not returned: %+v", c)
	}
}

// TestNodeCodeNATSNameLength proves that a node code is refused where its
// delivery consumer's name, deliver_<token>@<relay id>, would pass
// JetStream's 255 bytes (the relay then failed at start), and taken up to
// them (relay id "relay", the default).
func TestNodeCodeNATSNameLength(t *testing.T) {
	for _, c := range []struct {
		code string
		ok   bool
	}{
		{strings.Repeat("a", 241), true},
		{strings.Repeat("a", 242), false},
		{strings.Repeat("Ц", 40), true}, // 240 bytes of token
		{strings.Repeat("Ц", 41), false},
	} {
		cfg, err := Parse([]byte("nodes:\n  " + c.code + ":\n    deliver: { dir: ./a }\n"))
		if err != nil {
			t.Fatal(err)
		}
		got := cfg.Problems(kindChecker{})
		if c.ok && len(got) > 0 || !c.ok && (len(got) != 1 || !strings.HasPrefix(got[0], "nodes."+c.code+": node code is too long")) {
			t.Errorf("code of %d bytes: problems %q", len(c.code), got)
		}
	}
}

// TestNodeCodeAHeaderCouldName: routing.yaml accepted node codes that
// every message's header is refused for (a control character, a text
// direction mark, ".."), so such a node could never send or receive
// (found by review); validate says so now, with the header's reason.
func TestNodeCodeAHeaderCouldName(t *testing.T) {
	for _, c := range []struct{ code, why string }{
		{`"A/B"`, "contains a path separator"},
		{`"A\\B"`, "contains a path separator"},
		{`"A\x01B"`, "contains a control character"},
		{`"A\u202eB"`, "text direction mark"},
		{`"A..B"`, `contains ".."`},
		// Their messages' file names would not read back (found by review:
		// validate said OK, and in a folder the addressee's 1C shares its
		// pickup took the delivered file as a dead letter).
		{`SHOP_`, `begins or ends with "_"`},
		{`_SHOP`, `begins or ends with "_"`},
		{`SHOP__1`, `holds "__"`},
		{`R_01_02_03_04_05_06`, `more than 6 "_"-separated parts`},
		{`ЦО`, ""},
		{`SHOP-1_a`, ""},
		{`R_01_02_03_04_05`, ""},
	} {
		cfg, err := Parse([]byte("nodes:\n  " + c.code + ":\n    deliver: { dir: ./a }\n"))
		if err != nil {
			t.Fatal(err)
		}
		got := cfg.Problems(kindChecker{})
		if c.why == "" && len(got) > 0 || c.why != "" && (len(got) != 1 || !strings.Contains(got[0], c.why)) {
			t.Errorf("node %s: problems %q, want %q", c.code, got, c.why)
		}
	}
}

// TestZeroRefused proves that an explicit zero duration or size is refused
// with its path: every one of them reads an unset zero as its default, so
// `ack_alert_after: 0s` or `max_message_size: 0` silently meant 24h or 2 GiB.
func TestZeroRefused(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"relay:\n  ack_alert_after: 0s\n", `relay.ack_alert_after: "0s": zero would silently become the default`},
		{"relay:\n  lease_ttl: 0ms\n", `relay.lease_ttl: "0ms": zero would silently become the default`},
		{"relay:\n  max_message_size: 0\n", `relay.max_message_size: "0": zero would silently become the default`},
		{"relay:\n  max_message_size: 0MiB\n", `relay.max_message_size: "0MiB": zero would silently become the default`},
	} {
		_, err := Parse([]byte(c.yaml + "nodes:\n  A:\n    deliver: { dir: ./a }\n"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.yaml, err, c.want)
		}
	}
}

// TestNotUTF8NamesTheLine: a routing.yaml saved in Windows-1251 (Notepad's
// "ANSI" on a Russian Windows) got the YAML decoder's bare "invalid
// trailing UTF-8 octet" (found by review); the line and the likely cause
// are named now. UTF-8 with a BOM and UTF-16 still load.
func TestNotUTF8NamesTheLine(t *testing.T) {
	// ЦО in Windows-1251 is 0xD6 0xCE.
	_, err := Parse([]byte("relay: { listen: 127.0.0.1:8088 }\nnodes:\n  \xd6\xce:\n    deliver: { dir: ./in }\n"))
	if err == nil || err.Error() != "line 3 column 3: not UTF-8 (saved as Windows-1251?): save routing.yaml as UTF-8" {
		t.Fatalf("Parse: %v", err)
	}
	// A BOM is no column (it counted as column 1; found by review).
	if _, err := Parse([]byte("\xef\xbb\xbfnodes: \xd6\xce\n")); err == nil || !strings.HasPrefix(err.Error(), "line 1 column 8:") {
		t.Fatalf("Parse with a BOM: %v; want line 1 column 8", err)
	}
	doc := "nodes:\n  ЦО:\n    deliver: { dir: ./in }\n"
	u16 := []byte{0xff, 0xfe}
	for _, r := range doc {
		u16 = append(u16, byte(r), byte(r>>8))
	}
	for name, data := range map[string][]byte{"UTF-8 with BOM": append([]byte("\xef\xbb\xbf"), doc...), "UTF-16LE": u16} {
		if c, err := Parse(data); err != nil || c.Nodes["ЦО"] == nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestLimits: relay.max_xml_token sets the limit of one XML token every
// reading of a message keeps to; the other limits stay the defaults.
func TestLimits(t *testing.T) {
	for y, want := range map[string]int64{
		"":                                   64 << 20,
		"relay: { max_xml_token: 256MiB }\n": 256 << 20,
	} {
		cfg, err := Parse([]byte(y + "nodes:\n  A:\n    deliver: { dir: ./b }\n"))
		if err != nil {
			t.Fatal(err)
		}
		l := cfg.Limits()
		if d := exchange.DefaultLimits(); l.MaxTokenBytes != want || l.MaxSize != d.MaxSize || l.MaxHeaderBytes != d.MaxHeaderBytes {
			t.Errorf("%q: limits %+v, want MaxTokenBytes %d and the rest default", y, l, want)
		}
	}
}

// TestProblemsNameTheirLine: a problem found after decoding (a mode that
// is none, an option for the other mode) names the line its key is on, as
// decoding's own problems do (found walking through the quick start: only
// these had none); one that names its line already gets no second.
func TestProblemsNameTheirLine(t *testing.T) {
	cfg, err := Parse([]byte("nodes:\n  A:\n    mode: sequental\n    deliver: { dir: ./a }\n  B:\n    overwrite_unread: true\n    deliver: { dir: ./b }\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.Problems(kindChecker{})
	want := []string{
		`nodes.A.mode: "sequental" is not latest or sequential (line 3)`,
		"nodes.B.overwrite_unread: applies to a sequential node (a latest node's newest message always goes over the one before) (line 6)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("problems\n%q\nwant\n%q", got, want)
	}
}
