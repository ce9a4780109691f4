// Package ftp picks exchange messages up from a folder on an FTP/FTPS server
// and delivers them into one: the most common 1C exchange, where the node
// writes Message_A_B.xml straight to its final name and reads Message_B_A.xml
// from the same server. Pickup waits until a file is stable and complete;
// delivery uploads to a hidden temp name, checks the size and renames, so the
// final name never refers to partial content.
package ftp

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/text/encoding/charmap"
	"gopkg.in/yaml.v3"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Config is the value under `ftp:` of a pickup or deliver endpoint.
type Config struct {
	// URL is ftp://user@host:port/path. The path is relative to the login
	// folder; start it with // (ftp://u@h//srv/out) for an absolute path.
	URL string `yaml:"url"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
	// TLS is none (default), explicit (AUTH TLS on the plain port) or implicit (FTPS, usually port 990).
	TLS string `yaml:"tls"`
	// CAFile is a PEM bundle to verify the server with instead of the system roots.
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify turns certificate checks off; relay logs a warning at every connect.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// Encoding of file names on the server: utf-8 (default) or cp1251 for
	// servers that list Cyrillic names in Windows-1251.
	Encoding string `yaml:"encoding"`
	// ConnectTimeout bounds dialing, the TLS handshake and login (default 15s).
	ConnectTimeout config.Duration `yaml:"connect_timeout"`
	// IOTimeout is the longest silence on the control or data connection
	// before it is given up as dead (default 60s).
	IOTimeout config.Duration `yaml:"io_timeout"`

	// Pickup only.

	// PollInterval is how often the folder is listed (default 10s).
	PollInterval config.Duration `yaml:"poll_interval"`
	// Settle is how long size and mtime must stay unchanged before a file
	// is downloaded (default 5s).
	Settle config.Duration `yaml:"settle"`
	// IncompleteTimeout is how long a stable but incomplete file is waited
	// for before it is dead-lettered (default 10m).
	IncompleteTimeout config.Duration `yaml:"incomplete_timeout"`

	role string
	// IsNode tells routing.yaml's node codes (set by relay, not read from
	// the file): see folder.Options.IsNode.
	IsNode func(code string) bool `yaml:"-"`
	// Limits bound the reading of a picked-up message (set by relay from
	// routing.yaml's relay section; zero: the exchange defaults).
	Limits exchange.Limits `yaml:"-"`
}

// TLS modes.
const (
	TLSNone     = "none"
	TLSExplicit = "explicit"
	TLSImplicit = "implicit"
)

// Defaults.
const (
	DefaultConnectTimeout    = 15 * time.Second
	DefaultIOTimeout         = 60 * time.Second
	DefaultPollInterval      = 10 * time.Second
	DefaultSettle            = 5 * time.Second
	DefaultIncompleteTimeout = 10 * time.Minute
)

// Decode reads the value under `ftp:`; role is "pickup" or "deliver".
func Decode(n *yaml.Node, role string) (Config, error) {
	var c Config
	if err := config.DecodeURLOrOptions(n, &c, &c.URL); err != nil {
		return c, err
	}
	c.role = role
	c.setDefaults()
	return c, nil
}

func (c *Config) setDefaults() {
	if c.TLS == "" {
		c.TLS = TLSNone
	}
	if c.Encoding == "" {
		c.Encoding = "utf-8"
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = config.Duration(DefaultConnectTimeout)
	}
	if c.IOTimeout == 0 {
		c.IOTimeout = config.Duration(DefaultIOTimeout)
	}
	if c.PollInterval == 0 {
		c.PollInterval = config.Duration(DefaultPollInterval)
	}
	if c.Settle == 0 {
		c.Settle = config.Duration(DefaultSettle)
	}
	if c.IncompleteTimeout == 0 {
		c.IncompleteTimeout = config.Duration(DefaultIncompleteTimeout)
	}
}

// Validate reports every problem of the options, each prefixed with its key.
func (c *Config) Validate() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := c.target(); err != nil {
		add("url: %v", err)
	}
	switch c.TLS {
	case TLSNone, TLSExplicit, TLSImplicit:
	default:
		add("tls: %q is not none, explicit or implicit", c.TLS)
	}
	if c.PasswordEnv != "" && !config.ValidEnvName(c.PasswordEnv) {
		add("password_env: %s", config.NotEnvName)
	}
	if c.CAFile != "" && c.TLS == TLSNone {
		add("ca_file: set, but tls is none")
	}
	switch strings.ToLower(c.Encoding) {
	case "utf-8", "utf8":
	case "cp1251", "windows-1251":
		if t, err := c.target(); err == nil {
			if _, err := charmap.Windows1251.NewEncoder().String(t.dir); err != nil {
				add("url: the folder %s cannot be written in Windows-1251 (encoding: cp1251)", t.dir)
			}
		}
	default:
		add("encoding: %q is not utf-8 or cp1251", c.Encoding)
	}
	if c.IOTimeout.Std() < time.Second {
		add("io_timeout: %s is below 1s", c.IOTimeout.Std())
	}
	if c.role == "pickup" {
		if c.PollInterval.Std() < 100*time.Millisecond {
			add("poll_interval: %s is below 100ms", c.PollInterval.Std())
		}
		if c.IncompleteTimeout.Std() < c.Settle.Std() {
			add("incomplete_timeout: must not be shorter than settle")
		}
	} else {
		for _, k := range []struct {
			set  bool
			name string
		}{{c.PollInterval.Std() != DefaultPollInterval, "poll_interval"}, {c.Settle.Std() != DefaultSettle, "settle"}, {c.IncompleteTimeout.Std() != DefaultIncompleteTimeout, "incomplete_timeout"}} {
			if k.set {
				add("%s: only for pickup", k.name)
			}
		}
	}
	return errs
}

// CheckAfter reports an after: move: into the pickup folder itself, where
// every file moved would be taken again at once, in a loop. An absolute
// folder is told only against an absolute pickup folder: where "/" is
// depends on the account.
func (c *Config) CheckAfter(after config.After) []error {
	t, err := c.target()
	if err != nil || after.Action != config.AfterMove || path.IsAbs(after.Folder) && !path.IsAbs(t.dir) {
		return nil
	}
	to := after.Folder
	if !path.IsAbs(to) {
		to = path.Join(t.dir, to)
	}
	if path.Clean(to) == path.Join(t.dir, ".") {
		return []error{fmt.Errorf("after: move:%s is the pickup folder itself: every file moved would be taken again", after.Folder)}
	}
	return nil
}

// target is the parsed URL.
type target struct {
	addr string // host:port
	host string
	user string
	dir  string // folder on the server, "" = the login folder
	// display is the URL without password, for logs and keys.
	display string
}

func (c *Config) target() (target, error) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme == "" {
		return target{}, errors.New("not a URL like ftp://user@host:21/folder")
	}
	if u.Scheme != "ftp" {
		return target{}, fmt.Errorf("scheme %q: want ftp:// (TLS is the tls: option)", u.Scheme)
	}
	if u.Hostname() == "" {
		return target{}, errors.New("no host")
	}
	if u.User == nil || u.User.Username() == "" {
		return target{}, errors.New("no user (ftp://user@host/...; the password comes from password_env)")
	}
	if _, ok := u.User.Password(); ok {
		return target{}, errors.New("has a password: put it in the environment variable named by password_env")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return target{}, errors.New("query and fragment are not allowed")
	}
	port := u.Port()
	if port == "" {
		port = "21"
		if c.TLS == TLSImplicit {
			port = "990"
		}
	}
	dir := strings.TrimPrefix(u.Path, "/")
	if dir != "" {
		dir = path.Clean(dir)
	}
	if dir == "." {
		dir = ""
	}
	t := target{addr: net.JoinHostPort(u.Hostname(), port), host: u.Hostname(), user: u.User.Username(), dir: dir}
	t.display = "ftp://" + url.PathEscape(t.user) + "@" + t.addr + "/" + dir
	return t, nil
}

// password reads the password from the environment.
func (c *Config) password() (string, error) {
	if c.PasswordEnv == "" {
		return "", nil
	}
	v, ok := os.LookupEnv(c.PasswordEnv)
	if !ok {
		return "", fmt.Errorf("environment variable %s (password_env) is not set", c.PasswordEnv)
	}
	return v, nil
}
