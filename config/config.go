// Package config loads and checks routing.yaml, the one file that says which
// nodes exist, where their messages are picked up and where they are delivered.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"

	"github.com/relay1c/relay/exchange"
)

// Config is routing.yaml as a whole.
type Config struct {
	// Relay holds this instance's own settings.
	Relay Relay `yaml:"relay"`
	// NATS says which NATS to use; empty URL means an embedded server.
	NATS NATS `yaml:"nats"`
	// Nodes maps a node code, exactly as 1C writes it in From/To, to its endpoints.
	Nodes map[string]*Node `yaml:"nodes"`

	// path is the file the config was read from; relative paths resolve against its folder.
	path string
	// idDefaulted says relay.id was not written (the default "relay").
	idDefaulted bool
	// lines is the line of routing.yaml each key's path is written on,
	// for Problems to say it as decoding's problems do.
	lines map[string]int
}

// Relay is the `relay:` section.
type Relay struct {
	// ID names this instance; it serves nodes whose `relay` is this ID or empty.
	ID string `yaml:"id"`
	// DataDir holds the embedded JetStream store and the spool.
	DataDir string `yaml:"data_dir"`
	// Listen is the address of the HTTP API, health and metrics.
	Listen string `yaml:"listen"`
	// APITokenEnv names the variable holding the API bearer token; unset means loopback-only API.
	APITokenEnv string `yaml:"api_token_env"`
	// MaxMessageSize bounds a message pushed to POST /api/v1/messages (default 2GiB).
	MaxMessageSize Size `yaml:"max_message_size"`
	// MaxXMLToken bounds one XML token of a message (a text run, such as
	// a file 1C keeps in the infobase and writes as one base64 text):
	// checking a file holds its longest token in memory (default 64MiB).
	MaxXMLToken Size `yaml:"max_xml_token"`
	// AckAlertAfter is how long a delivered message may wait for its
	// acknowledgement before the channel is flagged (default 24h).
	AckAlertAfter Duration `yaml:"ack_alert_after"`
	// LeaseTTL is how long a replica's hold on a pickup endpoint lasts
	// without renewal on a shared NATS (default 6s): the failover time after
	// a replica dies.
	LeaseTTL Duration `yaml:"lease_ttl"`
}

// NATS is the `nats:` section.
type NATS struct {
	// URL of an external NATS (nats://, tls://, comma-separated for a cluster); empty runs an embedded server.
	URL string `yaml:"url"`
	// CredsFile is a NATS credentials file for the external server.
	CredsFile string `yaml:"creds_file"`
	// User and PasswordEnv (the environment variable holding the password)
	// log in to an external server that uses user/password accounts.
	User        string `yaml:"user"`
	PasswordEnv string `yaml:"password_env"`
	// TokenEnv names the environment variable holding a token, for an
	// external server that authenticates by token.
	TokenEnv string `yaml:"token_env"`
	// TLS configures the connection to an external server.
	TLS *TLS `yaml:"tls"`
	// Listen, for the embedded server, opens a client port (e.g. 127.0.0.1:4222); empty keeps it in-process only.
	Listen string `yaml:"listen"`
	// Replicas is how many servers of an external cluster keep each stream
	// and bucket (default 1; 3 on a three-server cluster, so one may stop).
	Replicas int `yaml:"replicas"`
	// Leaf, for the embedded server, connects it as a leaf node to a remote
	// cluster (the head office): messages are stored here and move to and
	// from the remote relays' JetStream domains whenever the link is up.
	Leaf *Leaf `yaml:"leaf"`
	// Sync, for the embedded server, is how often its store is flushed to
	// the disk (a duration; default nats-server's 2m), or "always": before
	// each write is acknowledged. A killed process loses nothing either
	// way; a power loss or an OS crash loses what was written since the
	// last flush, whose sources were committed already.
	Sync string `yaml:"sync"`
}

// SyncAlways is nats.sync's value for a flush before every acknowledgement.
const SyncAlways = "always"

// SyncInterval is nats.sync read: always, or how often (0: the server's
// default); ok false when it reads as neither.
func (n NATS) SyncInterval() (always bool, every time.Duration, ok bool) {
	switch n.Sync {
	case "":
		return false, 0, true
	case SyncAlways:
		return true, 0, true
	}
	d, err := time.ParseDuration(n.Sync)
	return false, d, err == nil && d > 0
}

// Leaf is the `nats.leaf:` section.
type Leaf struct {
	// URL is the remote's leaf node port: nats-leaf://host:7422 (or tls://);
	// several, comma-separated, are tried in turn.
	URL string `yaml:"url"`
	// CredsFile authenticates the leaf connection.
	CredsFile string `yaml:"creds_file"`
	// TLS configures the leaf connection.
	TLS *TLS `yaml:"tls"`
}

// TLS holds client TLS files.
type TLS struct {
	// CAFile verifies the server.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile authenticate this client (optional).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Mode says how a node's incoming channels are ordered.
type Mode string

// Delivery modes (DESIGN.md §2).
const (
	// ModeLatest delivers the newest message; older undelivered ones are superseded.
	ModeLatest Mode = "latest"
	// ModeSequential delivers every message in MessageNo order and holds on a gap.
	ModeSequential Mode = "sequential"
)

// Node is one 1C node (an infobase) and its endpoints.
type Node struct {
	// Title is a human name shown to operators.
	Title string `yaml:"title"`
	// Relay is the relay instance that serves this node; empty = every relay.
	Relay string `yaml:"relay"`
	// Mode is latest (default) or sequential.
	Mode Mode `yaml:"mode"`
	// OverwriteUnread lets a sequential node's folder destination take the
	// next number over one the node has not acknowledged: for a node whose
	// files are taken away as they land, or that acknowledges outside relay
	// (by default relay waits, as overwriting would lose an increment).
	OverwriteUnread bool `yaml:"overwrite_unread"`
	// Pickup is where the node leaves its outgoing messages.
	Pickup *Endpoint `yaml:"pickup"`
	// Deliver is where the node reads its incoming messages.
	Deliver *Endpoint `yaml:"deliver"`
	// APITokenEnv names the variable holding this node's own API token: with
	// it the node may push messages whose From is itself and pull its own.
	APITokenEnv string `yaml:"api_token_env"`
	// ZipPasswordEnv names the variable holding 1C's archive password of
	// this node's exchange: with it relay reads the header of the
	// password-protected zips the node writes and those written to it.
	ZipPasswordEnv string `yaml:"zip_password_env"`
}

// IsNode says code is a node of routing.yaml.
func (c *Config) IsNode(code string) bool {
	_, ok := c.Nodes[code]
	return ok
}

// APIToken is the bearer token in the environment variable env ("" when
// unset), without surrounding whitespace: an HTTP header cannot carry it,
// and a token stored from a file (a Kubernetes Secret made with
// --from-file) keeps the file's newline, which no request would ever match.
func APIToken(env string) string { return strings.TrimSpace(os.Getenv(env)) }

// ZipPasswords are the archive passwords to try, in order, on a
// password-protected zip of the channel from → to: the sender's, then the
// addressee's. 1C keeps the password per pair of nodes, on both sides, so
// a head office talking to offices with different passwords has them set
// on each office's node. Unset or empty variables are left out.
func (c *Config) ZipPasswords(from, to string) []string {
	var out []string
	for _, code := range []string{from, to} {
		n := c.Nodes[code]
		if n == nil || n.ZipPasswordEnv == "" {
			continue
		}
		if pw := os.Getenv(n.ZipPasswordEnv); pw != "" && !slices.Contains(out, pw) {
			out = append(out, pw)
		}
	}
	return out
}

// After says what a pickup does with a source once JetStream holds the message.
type After struct {
	// Action is delete, move or keep.
	Action string
	// Folder is the target of move.
	Folder string
}

// After actions.
const (
	AfterDelete = "delete"
	AfterMove   = "move"
	AfterKeep   = "keep"
)

// String formats After as routing.yaml writes it.
func (a After) String() string {
	if a.Action == AfterMove {
		return "move:" + a.Folder
	}
	return a.Action
}

// Endpoint is one pickup or deliver entry: exactly one kind key (dir, ftp,
// imap, smtp, http, ...) whose value is that adapter's own options, plus the
// generic `after` for pickups.
type Endpoint struct {
	// Kind is the adapter name (the key).
	Kind string
	// Options is the raw value under the kind key, decoded by the adapter.
	Options yaml.Node
	// After applies to pickups only.
	After After
}

// UnmarshalYAML reads `{ <kind>: <options>, after: ... }`. Aliases and
// merge keys are resolved first, so the options stand on their own. Its
// errors are *yaml.TypeError, which yaml.v3 collects and decodes past, so
// that one bad endpoint does not hide the rest of routing.yaml.
func (e *Endpoint) UnmarshalYAML(n *yaml.Node) error {
	n, err := resolveAliases(n)
	if err != nil {
		return &yaml.TypeError{Errors: []string{err.Error()}}
	}
	if n.Kind != yaml.MappingNode {
		return valueError(n, "an endpoint is a mapping like { dir: ./path }")
	}
	var errs []string
	var after *yaml.Node
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if first, ok := seen[k.Value]; ok {
			errs = append(errs, positioned(v, "written twice in one endpoint (first at line %d); keep one", first.Line))
			continue
		}
		seen[k.Value] = k
		switch k.Value {
		case "after":
			after = v
		default:
			if e.Kind != "" {
				errs = append(errs, positioned(v, "endpoint has two kinds, %s and %s; one endpoint is one kind", e.Kind, k.Value))
				continue
			}
			e.Kind = k.Value
			e.Options = *v
		}
	}
	if e.Kind == "" {
		errs = append(errs, positioned(n, "endpoint names no kind (dir, ftp, imap, smtp, http)"))
	}
	e.After = After{Action: AfterDelete}
	switch {
	case after == nil:
	case after.Kind != yaml.ScalarNode:
		errs = append(errs, positioned(after, "want delete, move:<folder> or keep"))
	default:
		a, err := ParseAfter(after.Value)
		if err != nil {
			errs = append(errs, positioned(after, "%s", strings.TrimPrefix(err.Error(), "after: ")))
		} else {
			e.After = a
		}
	}
	if len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	return nil
}

// ParseAfter reads `delete`, `move:<folder>` or `keep`; empty means delete.
func ParseAfter(s string) (After, error) {
	switch {
	case s == "" || s == AfterDelete:
		return After{Action: AfterDelete}, nil
	case s == AfterKeep:
		return After{Action: AfterKeep}, nil
	case strings.HasPrefix(s, "move:") && strings.TrimSpace(s[len("move:"):]) != "":
		return After{Action: AfterMove, Folder: strings.TrimSpace(s[len("move:"):])}, nil
	}
	return After{}, fmt.Errorf("after: %q is not delete, move:<folder> or keep", s)
}

// Duration is a time.Duration written as "10s", "2m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses Go duration syntax. Zero is refused: every duration
// of the config reads an unset zero as its default, so an explicit `0s`
// would silently mean something else. Its errors are *yaml.TypeError,
// which yaml.v3 collects and decodes past.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return valueError(n, "%q is not a duration like 10s or 2m", n.Value)
	}
	if v < 0 {
		return valueError(n, "duration %q is negative", n.Value)
	}
	if v == 0 {
		return valueError(n, "%q: zero would silently become the default; leave the key out for that, or give more", n.Value)
	}
	*d = Duration(v)
	return nil
}

// Std returns the value as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Size is a byte count written as "10MiB", "25MB" or a plain number in YAML.
type Size int64

// UnmarshalYAML parses sizes with IEC (KiB, MiB, GiB) or SI (kB, MB, GB)
// units. Zero is refused, as for Duration. A ',' is refused: humanize reads it as a thousands separator, so
// the decimal comma of 1,5GiB would make it 15 GiB. Its errors are
// *yaml.TypeError, which yaml.v3 collects and decodes past.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if strings.Contains(n.Value, ",") {
		return valueError(n, "%q has a ',': write a fraction with '.' (1.5GiB) and no thousands separators", n.Value)
	}
	v, err := humanize.ParseBytes(n.Value)
	if err != nil || v > math.MaxInt64 {
		return valueError(n, "%q is not a size like 10MiB or 25MB", n.Value)
	}
	if v == 0 {
		return valueError(n, "%q: zero would silently become the default; leave the key out for that, or give more", n.Value)
	}
	*s = Size(v)
	return nil
}

// String writes the size with IEC units.
func (s Size) String() string { return humanize.IBytes(uint64(s)) }

// maxXMLToken bounds relay.max_xml_token: checking a file may hold about
// twice it in memory.
const maxXMLToken = 1 << 30

// Limits are the bounds every reading of a message here keeps to: the
// exchange defaults, one XML token up to relay.max_xml_token.
func (c *Config) Limits() exchange.Limits {
	l := exchange.DefaultLimits()
	if c.Relay.MaxXMLToken > 0 {
		l.MaxTokenBytes = int64(c.Relay.MaxXMLToken)
	}
	return l
}

// DefaultMaxMessageSize is relay.max_message_size when unset.
const DefaultMaxMessageSize = 2 << 30

// MaxConfigSize bounds routing.yaml; a bigger file is a mistake, not a config.
const MaxConfigSize = 4 << 20

// Load reads and decodes a routing.yaml file and fills defaults. It does not
// validate adapter options; call Problems for that. When the error is a
// *DecodeError (values that do not decode, unknown keys, ...), Load also
// returns what did decode, so that `relay validate` can list every problem
// at once; such a Config must not be run.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, MaxConfigSize)
	}
	c, err := Parse(data)
	if c != nil {
		c.path = path
	}
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// saysLine matches a problem that names its line already.
var saysLine = regexp.MustCompile(`\bline \d+`)

// Parse decodes routing.yaml bytes strictly (unknown keys, keys written
// twice and a second YAML document fail) and fills defaults. Every problem
// of decoding is reported at once, each with its path, in a *DecodeError;
// with it Parse also returns what did decode (defaults filled where a value
// did not), for Problems to check the rest. Any other error (YAML that does
// not parse) returns no Config.
func Parse(data []byte) (*Config, error) {
	if err := notUTF8(data); err != nil {
		return nil, err
	}
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var problems []string
	var te *yaml.TypeError
	loc := locate(data)
	if loc != nil {
		c.lines = loc.keyLine
	}
	switch err := dec.Decode(c); {
	case errors.Is(err, io.EOF):
		return nil, errors.New("file is empty")
	case errors.As(err, &te):
		for _, msg := range te.Errors {
			problems = append(problems, loc.name(msg))
		}
	case err != nil:
		return nil, err
	}
	// The decoder stops after the first document: what follows a `---`
	// would be ignored without a word.
	// An empty one (a '---' at the end) ignores nothing.
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) && (err != nil || !emptyDocument(&next)) {
		at := ""
		if err == nil {
			at = fmt.Sprintf(" (the second starts at line %d)", next.Line)
		}
		problems = append(problems, "routing.yaml holds more than one YAML document"+at+
			"; everything after the first '---' would be ignored: keep one")
	}
	problems = append(problems, nullCodes(data)...)
	c.setDefaults()
	if len(problems) > 0 {
		return c, &DecodeError{Problems: problems}
	}
	return c, nil
}

// nullCodes are the problems of node codes YAML reads as null (NULL, Null,
// null, ~): yaml.v3 drops such a key of a map without a word, and the
// node's messages became dead letters of an unknown node (found by
// review).
func nullCodes(data []byte) []string {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	root := doc.Content[0].Content
	var out []string
	for i := 0; i+1 < len(root); i += 2 {
		if root[i].Value != "nodes" {
			continue
		}
		// As yaml.v3 reads it: an alias, merge keys (<<) resolved.
		m, err := resolveAliases(root[i+1])
		if err != nil || m.Kind != yaml.MappingNode {
			continue
		}
		nodes := m.Content
		for j := 0; j < len(nodes); j += 2 {
			if k := nodes[j]; k.ShortTag() == "!!null" {
				out = append(out, fmt.Sprintf("nodes: line %d: code %q is what YAML reads as null, and would be dropped: quote it ('%s')", k.Line, k.Value, k.Value))
			}
		}
	}
	return out
}

// emptyDocument says the document n holds nothing (only comments or a null).
func emptyDocument(n *yaml.Node) bool {
	return n.Kind == yaml.DocumentNode && (len(n.Content) == 0 ||
		len(n.Content) == 1 && n.Content[0].Kind == yaml.ScalarNode && n.Content[0].ShortTag() == "!!null")
}

func (c *Config) setDefaults() {
	if c.Relay.ID == "" {
		c.Relay.ID, c.idDefaulted = "relay", true
	}
	if c.Relay.DataDir == "" {
		c.Relay.DataDir = "./data"
	}
	if c.Relay.Listen == "" {
		c.Relay.Listen = "127.0.0.1:8088"
	}
	if c.Relay.MaxMessageSize == 0 {
		c.Relay.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.Relay.MaxXMLToken == 0 {
		c.Relay.MaxXMLToken = Size(exchange.DefaultLimits().MaxTokenBytes)
	}
	if c.Relay.AckAlertAfter == 0 {
		c.Relay.AckAlertAfter = Duration(24 * time.Hour)
	}
	if c.Relay.LeaseTTL == 0 {
		c.Relay.LeaseTTL = Duration(DefaultLeaseTTL)
	}
	if c.NATS.Replicas == 0 {
		c.NATS.Replicas = 1
	}
	for _, n := range c.Nodes {
		if n == nil {
			continue
		}
		if n.Mode == "" {
			n.Mode = ModeLatest
		}
	}
}

// Resolve turns a path from the config into one relative to the working
// directory: relative paths are taken from the config file's folder.
func (c *Config) Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(c.path), p)
}

// NATSSettings is the nats section with its files (creds_file, tls files,
// and the leaf's) resolved like every other path of the config.
func (c *Config) NATSSettings() NATS {
	n := c.NATS
	n.CredsFile = c.Resolve(n.CredsFile)
	n.TLS = c.resolveTLS(n.TLS)
	if n.Leaf != nil {
		l := *n.Leaf
		l.CredsFile = c.Resolve(l.CredsFile)
		l.TLS = c.resolveTLS(l.TLS)
		n.Leaf = &l
	}
	return n
}

func (c *Config) resolveTLS(t *TLS) *TLS {
	if t == nil {
		return nil
	}
	return &TLS{CAFile: c.Resolve(t.CAFile), CertFile: c.Resolve(t.CertFile), KeyFile: c.Resolve(t.KeyFile)}
}

// Serves reports whether this relay runs the node's pickup and delivery.
func (c *Config) Serves(n *Node) bool {
	return n.Relay == "" || n.Relay == c.Relay.ID
}

// NodeNames returns the node codes in a stable order.
func (c *Config) NodeNames() []string {
	names := make([]string, 0, len(c.Nodes))
	for k := range c.Nodes {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// EndpointChecker validates one endpoint's adapter options; implemented by
// the adapter registry. It returns every problem, each prefixed by the path
// inside the options (e.g. "url: missing").
type EndpointChecker interface {
	CheckEndpoint(role string, e *Endpoint) []error
}

// Problems lists every error in the config with its path
// (nodes.SHOP1.pickup.ftp.url: ...). An empty result means valid.
func (c *Config) Problems(ep EndpointChecker) []string {
	var out []string
	// Each with its line when the path is written in routing.yaml (found
	// walking through the quick start: decoding's problems had it, these
	// not).
	add := func(path, format string, a ...any) {
		msg := path + ": " + fmt.Sprintf(format, a...)
		if line, ok := c.lines[path]; ok && !saysLine.MatchString(msg) {
			msg += fmt.Sprintf(" (line %d)", line)
		}
		out = append(out, msg)
	}
	if !validRelayID(c.Relay.ID) {
		add("relay.id", "%q must not contain spaces, '.', '*' or '>'", c.Relay.ID)
	}
	// A port number: net.Listen would serve a service name (:http) or a
	// port of its choosing (0), but the commands that talk to the relay
	// build their URL from it, where only the number it listens on is.
	if _, port, err := net.SplitHostPort(c.Relay.Listen); err != nil {
		add("relay.listen", "%q is not host:port", c.Relay.Listen)
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || strings.Trim(port, "0123456789") != "" {
		// Digits only: Atoi takes "+38999", a URL does not (found by
		// review: every command failed on it).
		add("relay.listen", "%q is not host:port (port %q: a number from 1 to 65535)", c.Relay.Listen, port)
	}
	if t := c.Relay.MaxXMLToken; t < 1<<20 || t > maxXMLToken {
		add("relay.max_xml_token", "%s is not between 1MiB and 1GiB", t)
	}
	if c.Relay.APITokenEnv != "" && !validEnvName(c.Relay.APITokenEnv) {
		add("relay.api_token_env", "%s", NotEnvName)
	}
	if c.NATS.URL == "" && (c.NATS.CredsFile != "" || c.NATS.TLS != nil || c.NATS.User != "" || c.NATS.PasswordEnv != "" || c.NATS.TokenEnv != "") {
		add("nats", "creds_file, user, password_env, token_env and tls apply to an external server; set nats.url or remove them")
	}
	for key, env := range map[string]string{"nats.password_env": c.NATS.PasswordEnv, "nats.token_env": c.NATS.TokenEnv} {
		if env != "" && !validEnvName(env) {
			add(key, "%s", NotEnvName)
		}
	}
	switch n := c.NATS; {
	case (n.User != "") != (n.PasswordEnv != ""):
		add("nats", "user and password_env go together")
	case n.TokenEnv != "" && (n.User != "" || n.CredsFile != ""), n.User != "" && n.CredsFile != "":
		add("nats", "one way to log in: creds_file, user with password_env, or token_env")
	}
	if c.NATS.Listen != "" {
		// As the embedded server reads it: a port number (-1: any free one).
		if _, port, err := net.SplitHostPort(c.NATS.Listen); err != nil {
			add("nats.listen", "%q is not host:port", c.NATS.Listen)
		} else if p, err := strconv.Atoi(port); err != nil || p < -1 || p > 65535 {
			add("nats.listen", "%q is not host:port (port %q)", c.NATS.Listen, port)
		} else if p == 0 {
			// nats-server reads 0 as its default port, 4222, not as one
			// the kernel picks (found by review).
			add("nats.listen", "%q: port 0 would be nats-server's default 4222; give a port, or -1 for any free one", c.NATS.Listen)
		}
	}
	tlsPair := func(path string, t *TLS) {
		if t != nil && (t.CertFile == "") != (t.KeyFile == "") {
			add(path, "cert_file and key_file go together")
		}
	}
	tlsPair("nats.tls", c.NATS.TLS)
	if c.NATS.Leaf != nil {
		tlsPair("nats.leaf.tls", c.NATS.Leaf.TLS)
	}
	for _, one := range splitURLs(c.NATS.URL) {
		if p := natsURLProblem(one, false); p != "" {
			add("nats.url", "%s", p)
		}
	}
	if c.NATS.URL != "" && len(splitURLs(c.NATS.URL)) == 0 {
		// The client would connect to its default, nats://127.0.0.1:4222.
		add("nats.url", "%q names no server: leave it empty for the embedded server, or write nats://host:4222", c.NATS.URL)
	}
	if c.NATS.URL != "" && c.NATS.Listen != "" {
		add("nats.listen", "only for the embedded server; remove it or nats.url")
	}
	if c.NATS.Replicas < 1 || c.NATS.Replicas > 5 {
		add("nats.replicas", "%d is not between 1 and 5", c.NATS.Replicas)
	} else if c.NATS.Replicas > 1 && c.NATS.URL == "" {
		add("nats.replicas", "applies to an external cluster; set nats.url or remove it")
	}
	if c.NATS.Sync != "" {
		if _, _, ok := c.NATS.SyncInterval(); !ok {
			add("nats.sync", "%q is neither a duration like 10s nor always", c.NATS.Sync)
		} else if c.NATS.URL != "" {
			add("nats.sync", "only for the embedded server (an external server's own config sets sync_interval); remove it or nats.url")
		}
	}
	if time.Duration(c.Relay.LeaseTTL) < time.Second {
		add("relay.lease_ttl", "%s is shorter than 1s", time.Duration(c.Relay.LeaseTTL))
	}
	if l := c.NATS.Leaf; l != nil {
		if c.idDefaulted {
			// Found by review: offices that all forgot it shared one
			// domain, and each served the head office's nodes.
			add("relay.id", "an office relay (nats.leaf) needs its own id: it names its JetStream domain and the nodes it serves (nodes.<code>.relay)")
		}
		if c.NATS.URL != "" {
			add("nats.leaf", "a leaf node is the embedded server; remove nats.url or nats.leaf")
		}
		for _, one := range l.URLs() {
			if p := natsURLProblem(one, true); p != "" {
				add("nats.leaf.url", "%s", p)
			}
		}
	}
	if len(c.Nodes) == 0 {
		add("nodes", "no nodes defined")
	}
	// A token identifies one caller: the API ignores a node token that is
	// also the operator's or another node's.
	tokenOf := map[string]string{}
	if c.Relay.APITokenEnv != "" {
		tokenOf[c.Relay.APITokenEnv] = "relay.api_token_env"
	}
	// A consumer's name carries the node's code and the relay id of the
	// JetStream domain it reads (bus.ConsumerName): the longest id named.
	longestRelay := Token(c.Relay.ID)
	for _, n := range c.Nodes {
		if n != nil && len(Token(n.Relay)) > len(longestRelay) {
			longestRelay = Token(n.Relay)
		}
	}
	for _, name := range c.NodeNames() {
		n := c.Nodes[name]
		p := "nodes." + name
		if strings.TrimSpace(name) != name || name == "" {
			add(p, "node code has leading or trailing spaces")
		}
		if why := exchange.CodeProblem(name); why != "" {
			add(p, "node code %s: no message header could name it", why)
		}
		if l := len(longestNodeName) + len(Token(name)) + 1 + len(longestRelay); l > maxNATSName {
			add(p, "node code is too long: its NATS consumer name %s<code>@%s would be %d bytes, over %d "+
				"(a byte other than A-Z, a-z, 0-9, '_' and '-' takes 3: a Cyrillic letter 6)", longestNodeName, longestRelay, l, maxNATSName)
		}
		if n == nil {
			add(p, "empty node; give it a pickup and/or deliver")
			continue
		}
		// The relay named here runs with it as relay.id: the same rules.
		if n.Relay != "" && !validRelayID(n.Relay) {
			add(p+".relay", "%q is not a possible relay.id: it must not contain spaces, '.', '*' or '>'", n.Relay)
		}
		if n.Mode != ModeLatest && n.Mode != ModeSequential {
			add(p+".mode", "%q is not latest or sequential", n.Mode)
		} else if n.OverwriteUnread && n.Mode != ModeSequential {
			add(p+".overwrite_unread", "applies to a sequential node (a latest node's newest message always goes over the one before)")
		}
		if n.Pickup == nil && n.Deliver == nil && n.APITokenEnv == "" {
			add(p, "has neither pickup nor deliver (nor api_token_env to push through the API)")
		}
		if n.ZipPasswordEnv != "" && !validEnvName(n.ZipPasswordEnv) {
			add(p+".zip_password_env", "%s", NotEnvName)
		}
		if n.APITokenEnv != "" && !validEnvName(n.APITokenEnv) {
			add(p+".api_token_env", "%s", NotEnvName)
		} else if n.APITokenEnv != "" {
			if other, ok := tokenOf[n.APITokenEnv]; ok {
				add(p+".api_token_env", "%q is also the token of %s; every node needs its own", n.APITokenEnv, other)
			} else {
				tokenOf[n.APITokenEnv] = p
			}
		}
		for _, role := range []string{"pickup", "deliver"} {
			e := n.Pickup
			if role == "deliver" {
				e = n.Deliver
			}
			if e == nil {
				continue
			}
			if role == "deliver" && e.After.Action != AfterDelete {
				add(p+".deliver.after", "after applies to pickups only")
			}
			if role == "deliver" && e.Kind == "http_pull" && n.APITokenEnv == "" {
				add(p+".deliver.http_pull", "the node pulls with its own token: set %s.api_token_env", p)
			}
			// No kind: decoding said so (a *DecodeError), there is nothing to check.
			if ep == nil || e.Kind == "" {
				continue
			}
			for _, err := range ep.CheckEndpoint(role, e) {
				// One problem a line (DecodeOptions joins every one).
				for _, msg := range strings.Split(err.Error(), "\n") {
					msg = strings.TrimPrefix(msg, e.Kind+": ")
					at := p + "." + role + "." + e.Kind
					// "url: bad" from an adapter becomes ...ftp.url: bad
					if key, rest, ok := strings.Cut(msg, ": "); ok && optionKey.MatchString(key) {
						at, msg = at+"."+key, rest
					}
					add(at, "%s", msg)
				}
			}
		}
	}
	return out
}

// URLs splits URL at commas.
func (l *Leaf) URLs() []string {
	var out []string
	for _, u := range strings.Split(l.URL, ",") {
		out = append(out, strings.TrimSpace(u))
	}
	return out
}

// validRelayID says id may be a relay.id: it names the relay's JetStream
// domain, where spaces, '.', '*' and '>' have a meaning of their own.
func validRelayID(id string) bool {
	return !strings.ContainsAny(id, " .*>\t")
}

// splitURLs splits nats.url as nats.go does: at commas, spaces trimmed,
// empty parts left out.
func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// natsURLProblem says what is wrong with one URL of nats.url (or of
// nats.leaf.url, leaf), "" when nothing. A user, password or token in it is
// refused without showing it: secrets never sit in routing.yaml, NATS
// authenticates relay with a credentials file.
func natsURLProblem(raw string, leaf bool) string {
	schemes, want, creds := natsSchemes, "nats://host:port (or tls://, ws://, wss://)",
		"set nats.user with nats.password_env, nats.token_env, or nats.creds_file instead"
	if leaf {
		schemes, want, creds = leafSchemes, "nats-leaf://host:port (or tls://, nats://, ws://, wss://)",
			"put the credentials in a NATS credentials file named by nats.leaf.creds_file"
	}
	// Anything up to the last '@' is user info (a host name has no '@'):
	// it is not shown, and a password with a '/' in it would hide it from
	// url.Parse.
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		shown := raw[i+1:]
		if scheme, _, ok := strings.Cut(raw, "://"); ok {
			shown = scheme + "://" + shown
		}
		return fmt.Sprintf("%q has a user, password or token in it: %s", shown, creds)
	}
	parse := raw
	if !leaf && !strings.Contains(raw, "://") {
		parse = "nats://" + raw // nats.go reads host:port so
	}
	u, err := url.Parse(parse)
	if err != nil || u.Host == "" || !schemes[u.Scheme] {
		return fmt.Sprintf("%q is not %s", raw, want)
	}
	if u.Hostname() == "" {
		// nats://:4222, a template whose host came out empty: Go dials
		// the local machine.
		return fmt.Sprintf("%q names no host: write %s", raw, want)
	}
	return ""
}

// DefaultLeaseTTL is relay.lease_ttl when unset.
const DefaultLeaseTTL = 6 * time.Second

// leafSchemes are the URL schemes nats-server accepts for a leaf remote.
var leafSchemes = map[string]bool{"nats-leaf": true, "nats": true, "tls": true, "ws": true, "wss": true}

// natsSchemes are the URL schemes nats.go connects to.
var natsSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true}

// optionKey is an adapter option name at the start of an adapter's error.
var optionKey = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*|\[[0-9]+\])*$`)

// NotEnvName is the problem of a *_env option whose value cannot name an
// environment variable. The value is not shown: the likeliest slip is the
// secret itself written where its variable's name goes.
const NotEnvName = "is not an environment variable name (value not shown: put the secret in the environment and name the variable here)"

// maxNATSName is the longest name JetStream gives a consumer (it is a
// folder's name in the store).
const maxNATSName = 255

// longestNodeName is the longest prefix of a NATS name made of a node
// code's Token and a relay id's: the delivery consumer's
// (bus.ConsumerName); the fetch consumer's, fetch_, is shorter.
const longestNodeName = "deliver_"

// validEnvName accepts POSIX-ish variable names.
func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		ok := r == '_' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || (i > 0 && r >= '0' && r <= '9')
		if !ok {
			return false
		}
	}
	return true
}

// ValidEnvName reports whether s can name an environment variable; adapters
// use it for their *_env options.
func ValidEnvName(s string) bool { return validEnvName(s) }

// DecodeURLOrOptions decodes an endpoint value that is either a URL (the
// short form, stored in *url) or a mapping of options decoded into v.
func DecodeURLOrOptions(n *yaml.Node, v any, url *string) error {
	n, err := resolveAliases(n)
	if err != nil {
		return err
	}
	switch n.Kind {
	case yaml.ScalarNode:
		*url = n.Value
		return nil
	case yaml.MappingNode:
		return DecodeOptions(n, v)
	}
	return fmt.Errorf("line %d: want a URL or a mapping with url:", n.Line)
}

// DecodeOptions decodes an adapter's option node into v, refusing unknown
// keys so a typo is an error, not a silently ignored option. (yaml.Node.Decode
// has no strict switch, so the node is re-encoded and decoded strictly;
// aliases and merge keys are resolved first, as the anchors they name are
// not re-encoded with it.)
func DecodeOptions(n *yaml.Node, v any) error {
	n, err := resolveAliases(n)
	if err != nil {
		return err
	}
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err = dec.Decode(v)
	var te *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return nil
	case !errors.As(err, &te):
		return err
	}
	// Each problem as routing.yaml's own: its key's path inside the
	// options and the line of routing.yaml (not of the re-encoded text).
	var enc yaml.Node
	if yaml.Unmarshal(b, &enc) != nil || len(enc.Content) != 1 {
		return err
	}
	loc := locateDoc(&enc)
	loc.lines = map[int]int{}
	mapLines(enc.Content[0], n, loc.lines)
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		errs = append(errs, errors.New(loc.name(msg)))
	}
	return errors.Join(errs...)
}

// notUTF8 names the first byte that is not UTF-8 in a file without a
// UTF-16 byte order mark (which the YAML decoder reads): a routing.yaml
// saved in Windows-1251 (Notepad's "ANSI" on a Russian Windows) got the
// decoder's bare "invalid trailing UTF-8 octet", with no line.
func notUTF8(data []byte) error {
	if bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe}) || utf8.Valid(data) {
		return nil
	}
	line, col := 1, 1
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a BOM is no column
	for len(data) > 0 {
		r, n := utf8.DecodeRune(data)
		if r == utf8.RuneError && n <= 1 {
			break
		}
		if r == '\n' {
			line, col = line+1, 0
		}
		col++
		data = data[n:]
	}
	return fmt.Errorf("line %d column %d: not UTF-8 (saved as Windows-1251?): save routing.yaml as UTF-8", line, col)
}
