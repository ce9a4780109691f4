package mail

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"golang.org/x/net/idna"
	"gopkg.in/yaml.v3"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// Server is what SMTP and IMAP endpoints share: where the server is, how
// to log in and how to secure the connection.
type Server struct {
	// URL is smtp://user@host:587 (STARTTLS), smtps://user@host:465 (TLS),
	// imap://user@host:143/INBOX (STARTTLS) or imaps://user@host:993/INBOX.
	// The user is optional for SMTP (no AUTH then).
	URL string `yaml:"url"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
	// StartTLS is required (default) or off, for smtp:// and imap:// URLs.
	// off sends the password in clear text: only for a server on the same host.
	StartTLS string `yaml:"starttls"`
	// CAFile is a PEM bundle to verify the server with instead of the system roots.
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify turns certificate checks off; relay logs a warning at every connect.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// ConnectTimeout bounds dialing, the TLS handshake and login (default 30s).
	ConnectTimeout config.Duration `yaml:"connect_timeout"`
	// IOTimeout is the longest wait for the server's answer to one command or
	// for one write to go out (default 2m). For IMAP it is the longest time
	// a reply, or a mail being downloaded, may go without a byte arriving:
	// a large mail on a slow link takes as long as it needs.
	IOTimeout config.Duration `yaml:"io_timeout"`
}

// StartTLS modes.
const (
	StartTLSRequired = "required"
	StartTLSOff      = "off"
)

// Defaults.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultIOTimeout      = 2 * time.Minute
	DefaultMaxMessageSize = 10 << 20
	DefaultPollInterval   = time.Minute
	DefaultPartTimeout    = 24 * time.Hour
	DefaultQuarantine     = "Quarantine"
	// minMessageSize keeps parts large enough to be worth a mail each.
	minMessageSize = 64 << 10
)

// SMTPConfig is the value under `smtp:` of a deliver endpoint.
type SMTPConfig struct {
	Server `yaml:",inline"`
	// From is the envelope and header sender.
	From string `yaml:"from"`
	// To are the recipients (the addressee node's mailbox).
	To []string `yaml:"to"`
	// SubjectPrefix starts the subject, before the file name (default
	// "EXCHANGE_MESSAGE:"; "СООБЩЕНИЕ_ОБМЕНА:" for the 1C book's form).
	SubjectPrefix string `yaml:"subject_prefix"`
	// MaxMessageSize is the largest mail sent (default 10MiB); a file whose
	// mail would be larger travels as parts. The server's SIZE, when smaller, wins.
	MaxMessageSize config.Size `yaml:"max_message_size"`
	// Compress: zip packs an .xml message into Message_A_B.zip before sending.
	Compress string `yaml:"compress"`
	// Helo is the name sent in EHLO (default: this host's name).
	Helo string `yaml:"helo"`
}

// IMAPConfig is the value under `imap:` of a pickup endpoint.
type IMAPConfig struct {
	Server `yaml:",inline"`
	// AllowedSenders, when set, are the only From addresses (or @domain)
	// whose mails are taken; others are left untouched.
	AllowedSenders []string `yaml:"allowed_senders"`
	// SubjectPattern is an extra subject form: a regular expression whose
	// group "file" (or first group) is the file name.
	SubjectPattern string `yaml:"subject_pattern"`
	// PollInterval is how often the mailbox is searched; with IDLE a new
	// mail is seen at once and this is only a safety net (default 1m).
	PollInterval config.Duration `yaml:"poll_interval"`
	// IDLE waits for new mail with IMAP IDLE when the server has it (default true).
	IDLE *bool `yaml:"idle"`
	// Quarantine is the folder a matching but malformed mail is moved to
	// (default Quarantine; created when missing).
	Quarantine string `yaml:"quarantine"`
	// PartTimeout is how long the parts of a split file are waited for
	// after the first arrived before the set is dead-lettered (default 24h).
	PartTimeout config.Duration `yaml:"part_timeout"`
	// IsNode tells routing.yaml's node codes (set by relay, not read from
	// the file): see folder.Options.IsNode.
	IsNode func(code string) bool `yaml:"-"`
	// Limits bound the reading of a picked-up message (set by relay from
	// routing.yaml's relay section; zero: the exchange defaults).
	Limits exchange.Limits `yaml:"-"`
}

// DecodeSMTP reads the value under `smtp:`.
func DecodeSMTP(n *yaml.Node) (SMTPConfig, error) {
	var c SMTPConfig
	if err := config.DecodeURLOrOptions(n, &c, &c.URL); err != nil {
		return c, err
	}
	c.Server.setDefaults()
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.Helo == "" {
		c.Helo, _ = os.Hostname()
		if c.Helo == "" || strings.ContainsAny(c.Helo, " \r\n") {
			c.Helo = "localhost"
		}
	}
	return c, nil
}

// DecodeIMAP reads the value under `imap:`.
func DecodeIMAP(n *yaml.Node) (IMAPConfig, error) {
	var c IMAPConfig
	if err := config.DecodeURLOrOptions(n, &c, &c.URL); err != nil {
		return c, err
	}
	c.Server.setDefaults()
	if c.PollInterval == 0 {
		c.PollInterval = config.Duration(DefaultPollInterval)
	}
	if c.IDLE == nil {
		t := true
		c.IDLE = &t
	}
	if c.Quarantine == "" {
		c.Quarantine = DefaultQuarantine
	}
	if c.PartTimeout == 0 {
		c.PartTimeout = config.Duration(DefaultPartTimeout)
	}
	return c, nil
}

func (s *Server) setDefaults() {
	if s.StartTLS == "" {
		s.StartTLS = StartTLSRequired
	}
	if s.ConnectTimeout == 0 {
		s.ConnectTimeout = config.Duration(DefaultConnectTimeout)
	}
	if s.IOTimeout == 0 {
		s.IOTimeout = config.Duration(DefaultIOTimeout)
	}
}

// Validate reports every problem of the options, each prefixed with its key.
func (c *SMTPConfig) Validate() []error {
	errs := c.Server.validate("smtp")
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if a, err := mail.ParseAddress(c.From); err != nil || c.From == "" {
		add("from: %q is not a mail address", c.From)
	} else if _, err := asciiAddress(a.Address); err != nil {
		add("from: %q: %v", c.From, err)
	}
	if len(c.To) == 0 {
		add("to: at least one recipient is needed")
	}
	for i, t := range c.To {
		if a, err := mail.ParseAddress(t); err != nil {
			add("to[%d]: %q is not a mail address", i, t)
		} else if _, err := asciiAddress(a.Address); err != nil {
			add("to[%d]: %q: %v", i, t, err)
		}
	}
	if strings.ContainsAny(c.SubjectPrefix, "\r\n") {
		add("subject_prefix: must be one line")
	}
	if c.MaxMessageSize < minMessageSize {
		add("max_message_size: %s is below %s", c.MaxMessageSize, config.Size(minMessageSize))
	}
	switch c.Compress {
	case "", "zip":
	default:
		add("compress: %q is not zip", c.Compress)
	}
	if strings.ContainsAny(c.Helo, " \r\n") {
		add("helo: %q is not a host name", c.Helo)
	}
	return errs
}

// Validate reports every problem of the options, each prefixed with its key.
func (c *IMAPConfig) Validate() []error {
	errs := c.Server.validate("imap")
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if t, err := c.target(); err == nil && t.user == "" {
		add("url: no user (imaps://user@host/INBOX; the password comes from password_env)")
	}
	for i, s := range c.AllowedSenders {
		if strings.HasPrefix(s, "@") && len(s) > 1 && !strings.ContainsAny(s[1:], "@ ") {
			continue
		}
		if _, err := mail.ParseAddress(s); err != nil {
			add("allowed_senders[%d]: %q is not a mail address or @domain", i, s)
		}
	}
	if _, err := c.pattern(); err != nil {
		add("subject_pattern: %v", err)
	}
	if c.PollInterval.Std() < time.Second {
		add("poll_interval: %s is below 1s", c.PollInterval.Std())
	}
	if c.PartTimeout.Std() < time.Minute {
		add("part_timeout: %s is below 1m", c.PartTimeout.Std())
	}
	if strings.ContainsAny(c.Quarantine, "\r\n*%") {
		add("quarantine: %q is not a folder name", c.Quarantine)
	}
	if t, err := c.target(); err == nil && sameMailbox(c.Quarantine, t.mailbox) {
		add("quarantine: %q is the mailbox read: a bad mail would come back to it under a new UID and make a new dead letter at every scan", c.Quarantine)
	}
	return errs
}

// CheckAfter reports an after: move: to the mailbox read, where each
// moved mail would come back under a new UID and be taken again.
func (c *IMAPConfig) CheckAfter(after config.After) []error {
	if t, err := c.target(); err == nil && after.Action == config.AfterMove && sameMailbox(after.Folder, t.mailbox) {
		return []error{fmt.Errorf("after: move:%s is the mailbox read: every mail moved would come back and be taken again", after.Folder)}
	}
	return nil
}

// sameMailbox says IMAP names a and b the same mailbox: INBOX in any case
// (RFC 3501 §5.1), any other name as it is.
func sameMailbox(a, b string) bool {
	a, b = strings.Trim(a, "/"), strings.Trim(b, "/")
	return a == b || strings.EqualFold(a, "INBOX") && strings.EqualFold(b, "INBOX")
}

func (c *IMAPConfig) pattern() (*regexp.Regexp, error) {
	if c.SubjectPattern == "" {
		return nil, nil
	}
	re, err := regexp.Compile(c.SubjectPattern)
	if err != nil {
		return nil, err
	}
	if re.NumSubexp() == 0 {
		return nil, errors.New("needs a group for the file name, e.g. ^Обмен: (?P<file>.+)$")
	}
	return re, nil
}

// allowed reports whether a sender address may hand in messages. Case
// does not count, nor the form of a domain in another script: склад.рф in
// allowed_senders matches the xn--80aiqe2a.xn--p1ai a sending relay writes
// (found by review: it never did), and the other way round.
func (c *IMAPConfig) allowed(addr string) bool {
	if len(c.AllowedSenders) == 0 {
		return true
	}
	addr = senderKey(strings.TrimSpace(addr))
	for _, s := range c.AllowedSenders {
		s = strings.TrimSpace(s)
		if strings.HasPrefix(s, "@") {
			if strings.HasSuffix(addr, "@"+domainKey(s[1:])) {
				return true
			}
			continue
		}
		if senderKey(s) == addr {
			return true
		}
		if a, err := mail.ParseAddress(s); err == nil && senderKey(a.Address) == addr {
			return true
		}
	}
	return false
}

// senderKey is addr as allowed compares it: lower case, the domain in its
// ASCII (IDNA) form.
func senderKey(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return strings.ToLower(addr)
	}
	return strings.ToLower(addr[:at]) + "@" + domainKey(addr[at+1:])
}

// domainKey is a domain in lower case and, when it is in another script,
// in its ASCII (IDNA) form; one with no such form stays as it is.
func domainKey(domain string) string {
	if nonASCII(domain) {
		if d, err := idna.Lookup.ToASCII(domain); err == nil {
			domain = d
		}
	}
	return strings.ToLower(domain)
}

func (s *Server) validate(proto string) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	t, err := s.target(proto)
	if err != nil {
		add("url: %v", err)
	}
	switch s.StartTLS {
	case StartTLSRequired, StartTLSOff:
		if t.implicitTLS && s.StartTLS == StartTLSOff {
			add("starttls: off contradicts the %ss:// URL", proto)
		}
	default:
		add("starttls: %q is not required or off", s.StartTLS)
	}
	if s.PasswordEnv != "" && !config.ValidEnvName(s.PasswordEnv) {
		add("password_env: %s", config.NotEnvName)
	}
	if s.PasswordEnv != "" && t.user == "" && err == nil {
		add("password_env: set, but the URL has no user")
	}
	if s.CAFile != "" && !t.tls() && err == nil {
		add("ca_file: set, but the connection is not TLS (starttls: off)")
	}
	if s.IOTimeout.Std() < time.Second {
		add("io_timeout: %s is below 1s", s.IOTimeout.Std())
	}
	if s.ConnectTimeout.Std() < time.Second {
		add("connect_timeout: %s is below 1s", s.ConnectTimeout.Std())
	}
	return errs
}

// target is a parsed server URL.
type target struct {
	addr        string // host:port
	host        string
	user        string
	mailbox     string // IMAP only; INBOX when the URL has no path
	implicitTLS bool
	startTLS    bool
	// display is the URL without password, for logs and keys.
	display string
}

func (t target) tls() bool { return t.implicitTLS || t.startTLS }

func (c *IMAPConfig) target() (target, error) { return c.Server.target("imap") }
func (c *SMTPConfig) target() (target, error) { return c.Server.target("smtp") }

func (s *Server) target(proto string) (target, error) {
	u, err := url.Parse(s.URL)
	if err != nil || u.Scheme == "" {
		return target{}, fmt.Errorf("not a URL like %ss://user@host/...", proto)
	}
	var t target
	switch u.Scheme {
	case proto:
		t.startTLS = s.StartTLS != StartTLSOff
	case proto + "s":
		t.implicitTLS = true
	default:
		return target{}, fmt.Errorf("scheme %q: want %s:// (STARTTLS) or %ss:// (TLS)", u.Scheme, proto, proto)
	}
	if u.Hostname() == "" {
		return target{}, errors.New("no host")
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			return target{}, errors.New("has a password: put it in the environment variable named by password_env")
		}
		t.user = u.User.Username()
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return target{}, errors.New("query and fragment are not allowed")
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"smtp": "587", "smtps": "465", "imap": "143", "imaps": "993"}[u.Scheme]
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)
	t.host = u.Hostname()
	if proto == "imap" {
		t.mailbox = strings.Trim(u.Path, "/")
		if t.mailbox == "" {
			t.mailbox = "INBOX"
		}
	} else if p := strings.Trim(u.Path, "/"); p != "" {
		return target{}, errors.New("an smtp URL has no path")
	}
	t.display = u.Scheme + "://"
	if t.user != "" {
		t.display += url.PathEscape(t.user) + "@"
	}
	t.display += t.addr
	if t.mailbox != "" {
		t.display += "/" + t.mailbox
	}
	return t, nil
}

// password reads the password from the environment.
func (s *Server) password() (string, error) {
	if s.PasswordEnv == "" {
		return "", nil
	}
	v, ok := os.LookupEnv(s.PasswordEnv)
	if !ok {
		return "", fmt.Errorf("environment variable %s (password_env) is not set", s.PasswordEnv)
	}
	return v, nil
}

// tlsConfig is the client TLS setup for host.
func (s *Server) tlsConfig(host string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: s.InsecureSkipVerify}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", s.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
