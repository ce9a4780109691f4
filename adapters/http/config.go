// Package http delivers exchange messages to an HTTP service and picks them
// up from one: a 1C HTTP service (`/base/hs/exchange/message`) that takes
// the file in a POST, a WebDAV folder that takes it in a PUT, or a service
// that hands out the next message on GET.
//
// Delivery counts as done only when the service answered 2xx (and not 1C's
// `{"error": true}` convention). The body streams from the object store and
// is re-sent whole on every retry and on 307/308 redirects; the request
// carries the message's id as Idempotency-Key so that a service can drop a
// repeat of a delivery whose answer was lost.
package http

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Config is the value under `http:` of a pickup or deliver endpoint.
type Config struct {
	// URL is the service: http:// or https://. With method PUT the file name
	// is appended to its path (url: https://h/dav/in/ stores /dav/in/Message_A_B.xml);
	// with POST and for pickup it is used as is.
	URL string `yaml:"url"`
	// Method is POST (default) or PUT (WebDAV-style targets); delivery only.
	Method string `yaml:"method"`
	// User is the basic-auth user; its password comes from PasswordEnv.
	User string `yaml:"user"`
	// PasswordEnv names the environment variable holding the basic-auth password.
	PasswordEnv string `yaml:"password_env"`
	// TokenEnv names the environment variable holding a bearer token
	// (Authorization: Bearer ...), instead of user and password.
	TokenEnv string `yaml:"token_env"`
	// CAFile is a PEM bundle to verify the server with instead of the system roots.
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify turns certificate checks off; relay logs a warning.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// ConnectTimeout bounds dialing and the TLS handshake (default 15s).
	ConnectTimeout config.Duration `yaml:"connect_timeout"`
	// Timeout bounds one whole request, body included (default 10m): raise
	// it for gigabyte messages over slow lines.
	Timeout config.Duration `yaml:"timeout"`
	// ResponseTimeout is the longest wait for the answer's headers after the
	// body was sent, and the longest time the body may stall in either
	// direction (default 2m).
	ResponseTimeout config.Duration `yaml:"response_timeout"`
	// Headers are extra static request headers (no secrets: those come from
	// *_env options).
	Headers map[string]string `yaml:"headers"`

	// Delivery only.

	// PutDirect makes a PUT go straight to the message's name, for a
	// server that shows a PUT's file only once it is whole or that has no
	// WebDAV MOVE; by default the file is PUT under a temporary name and
	// renamed with MOVE, so a node never sees it half-written.
	PutDirect bool `yaml:"put_direct"`
	// HealthURL, when set, is what `relay check` GETs (2xx = healthy)
	// instead of an OPTIONS request on URL.
	HealthURL string `yaml:"health_url"`

	// Pickup only.

	// Interval is how often URL is polled while it has nothing (default 1m).
	Interval config.Duration `yaml:"interval"`
	// IsNode tells routing.yaml's node codes (set by relay, not read from
	// the file): see folder.Options.IsNode.
	IsNode func(code string) bool `yaml:"-"`
	// Limits bound the reading of a picked-up message (set by relay from
	// routing.yaml's relay section; zero: the exchange defaults).
	Limits exchange.Limits `yaml:"-"`

	role string
}

// Defaults.
const (
	DefaultMethod          = "POST"
	DefaultConnectTimeout  = 15 * time.Second
	DefaultTimeout         = 10 * time.Minute
	DefaultResponseTimeout = 2 * time.Minute
	DefaultInterval        = time.Minute
)

// Decode reads the value under `http:`; role is "pickup" or "deliver". A
// scalar is the URL.
func Decode(n *yaml.Node, role string) (Config, error) {
	var c Config
	if err := config.DecodeURLOrOptions(n, &c, &c.URL); err != nil {
		return c, err
	}
	c.role = role
	c.setDefaults()
	return c, nil
}

// setDefaults fills unset options; it may be called more than once.
func (c *Config) setDefaults() {
	if c.role == "" {
		c.role = "deliver"
	}
	if c.role == "deliver" && c.Method == "" {
		c.Method = DefaultMethod
	}
	c.Method = strings.ToUpper(c.Method)
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = config.Duration(DefaultConnectTimeout)
	}
	if c.Timeout == 0 {
		c.Timeout = config.Duration(DefaultTimeout)
	}
	if c.ResponseTimeout == 0 {
		// Never longer than timeout: `timeout: 1m` alone was refused
		// for a response_timeout nobody wrote.
		c.ResponseTimeout = min(config.Duration(DefaultResponseTimeout), c.Timeout)
	}
	if c.role == "pickup" && c.Interval == 0 {
		c.Interval = config.Duration(DefaultInterval)
	}
}

// reservedHeaders are set by relay itself (or by Go's HTTP client) and
// cannot be given in headers:.
var reservedHeaders = map[string]string{
	"authorization":       "use user + password_env or token_env",
	"proxy-authorization": "set the proxy in HTTPS_PROXY",
	"host":                "",
	"content-length":      "",
	"content-type":        "",
	"content-disposition": "",
	"transfer-encoding":   "",
	"connection":          "",
	"idempotency-key":     "",
	"expect":              "",
	"te":                  "",
	"upgrade":             "",
	"trailer":             "",
}

// Validate reports every problem of the options, each prefixed with its key.
func (c *Config) Validate() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	u, err := parseURL(c.URL)
	if err != nil {
		add("url: %v", err)
	}
	switch {
	case c.role == "pickup" && c.Method != "":
		add("method: only for deliver (pickup always GETs)")
	case c.role != "pickup" && c.Method != "POST" && c.Method != "PUT":
		add("method: %q is not POST or PUT", c.Method)
	}
	if c.PutDirect && c.Method != "PUT" {
		add("put_direct: only with method: PUT")
	}
	if c.User != "" && strings.ContainsAny(c.User, ":\r\n") {
		add("user: %q cannot hold a colon or a line break", c.User)
	}
	switch {
	case c.User != "" && c.PasswordEnv == "":
		add("password_env: needed with user (basic auth)")
	case c.User == "" && c.PasswordEnv != "":
		add("password_env: set, but user is not")
	}
	if c.PasswordEnv != "" && !config.ValidEnvName(c.PasswordEnv) {
		add("password_env: %s", config.NotEnvName)
	}
	if c.TokenEnv != "" {
		if !config.ValidEnvName(c.TokenEnv) {
			add("token_env: %s", config.NotEnvName)
		}
		if c.User != "" || c.PasswordEnv != "" {
			add("token_env: cannot go with user and password_env: one kind of authentication")
		}
	}
	https := err == nil && u.Scheme == "https"
	if c.HealthURL != "" {
		if c.role == "pickup" {
			add("health_url: only for deliver")
		} else if hu, herr := parseURL(c.HealthURL); herr != nil {
			add("health_url: %v", herr)
		} else if hu.Scheme == "https" {
			https = true
		}
	}
	if c.CAFile != "" && !https && err == nil {
		add("ca_file: set, but the URL is not https://")
	}
	if c.InsecureSkipVerify && !https && err == nil {
		add("insecure_skip_verify: set, but the URL is not https://")
	}
	if c.CAFile != "" && c.InsecureSkipVerify {
		add("insecure_skip_verify: cannot go with ca_file: either verify with it or not at all")
	}
	if c.ConnectTimeout.Std() < time.Second {
		add("connect_timeout: %s is below 1s", c.ConnectTimeout.Std())
	}
	if c.Timeout.Std() < time.Second {
		add("timeout: %s is below 1s", c.Timeout.Std())
	}
	if c.ResponseTimeout.Std() < 100*time.Millisecond {
		add("response_timeout: %s is below 100ms", c.ResponseTimeout.Std())
	} else if c.ResponseTimeout > c.Timeout {
		add("response_timeout: %s is longer than timeout %s", c.ResponseTimeout.Std(), c.Timeout.Std())
	}
	for k, v := range c.Headers {
		lk := strings.ToLower(k)
		hint, reserved := reservedHeaders[lk]
		switch {
		case !validToken(k):
			add("headers: %q is not a header name", k)
		case reserved && hint != "":
			add("headers: %s is set by relay (%s)", k, hint)
		case reserved, strings.HasPrefix(lk, "x-relay-"):
			add("headers: %s is set by relay", k)
		case strings.HasPrefix(lk, "content-"):
			// Content-Encoding, Content-Range... would tell the service
			// the body is something it is not.
			add("headers: %s: relay describes the body itself", k)
		case strings.ContainsFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }):
			// Go's client refuses such a value in every request.
			add("headers: %s: the value cannot hold a line break or another control character", k)
		}
	}
	if c.role == "pickup" {
		if c.Interval.Std() < 100*time.Millisecond {
			add("interval: %s is below 100ms", c.Interval.Std())
		}
	} else if c.Interval != 0 {
		add("interval: only for pickup")
	}
	return errs
}

// validToken reports whether s is an RFC 9110 token (a header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("!#$%&'*+-.^_`|~", r):
		default:
			return false
		}
	}
	return true
}

// parseURL checks an http:// or https:// URL.
func parseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("required (http://host/path or https://host/path)")
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Opaque != "" {
		return nil, errors.New("not a URL like https://host/base/hs/exchange/message")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme %q: want http:// or https://", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("no host")
	}
	if u.User != nil {
		return nil, errors.New("has a user: put it in user: and the password in the environment variable named by password_env")
	}
	if u.Fragment != "" {
		return nil, errors.New("a fragment is not allowed")
	}
	return u, nil
}

// secret reads an environment variable named by option.
func secret(env, option string) (string, error) {
	v, ok := os.LookupEnv(env)
	if !ok {
		return "", fmt.Errorf("environment variable %s (%s) is not set", env, option)
	}
	return v, nil
}

// tlsConfig is the client TLS setup: the system roots or ca_file.
func (c *Config) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
