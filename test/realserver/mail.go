package realserver

// A real mail server on 127.0.0.1: Debian's postfix (SMTP, with STARTTLS and
// SMTP AUTH) delivering over LMTP into dovecot Maildirs that a second dovecot
// serves over IMAP (STARTTLS and IMAPS), one set of servers per caller.
//
// Layout. StartMail runs three daemons, each with its own config in the
// server's temp folder (Mail.Dir), all stopped by PID:
//   - dovecot "lmtp" (lmtp/): LMTP on a loopback port, where postfix
//     delivers, and the auth service on a loopback port, which postfix's
//     smtpd asks for SMTP AUTH (smtpd_sasl_type = dovecot).
//   - dovecot "imap" (imap/): IMAP (STARTTLS when TLS) and IMAPS (when TLS).
//   - postfix (postfix/): SMTP on a loopback port.
//
// The two dovecots share the passwd-file and the Maildirs (mail/<user>/
// Maildir); Maildir and dovecot's index locking are made for several
// processes, and IDLE in one sees a delivery by the other (the test checks
// it). StopIMAP stops only the IMAP one: during an IMAP outage SMTP, SMTP
// AUTH and delivery into the Maildir go on, as at a real provider. With one
// dovecot for all, an IMAP outage would also fail every SMTP AUTH and defer
// every delivery.
//
// postfix is a private instance, not the machine's: its own config_directory
// (postfix/etc: main.cf written here, master.cf copied from Debian's and
// changed with postconf -c), queue_directory and data_directory. Nothing in
// /etc/postfix or /var/spool/postfix is read or changed, no lock is needed,
// and several StartMail (parallel tests, `go test ./...` running packages as
// separate processes) run side by side.
//
// Mail storage belongs to the system user VmailUser ("vmail"), created on
// first use (useradd -r, root only) and kept, like vsftpd.go's FTP user;
// dovecot may not use root for mail, and a user of its own keeps the
// Maildirs away from any real account.
//
// Facts about Debian 12's dovecot 2.3.19 and postfix 3.7.11 that this code
// relies on, checked here (see also /work/shared/REALSERVERS.md):
//   - `dovecot -F -c <conf>` runs the master in the foreground from a config
//     file that includes nothing else: base_dir, state_dir and log_path in
//     the temp folder make instances independent (a second master on the
//     same base_dir exits: "Dovecot is already running with PID n"). Its
//     listeners are bound by the master at start-up, before any child runs;
//     a port in use ends it at once ("listen(127.0.0.1, p) failed: Address
//     already in use", "Failed to start listeners", exit 89). Its children
//     stay in its process group.
//   - On SIGTERM the dovecot master logs "Killed with signal 15" and exits
//     after about 1s, but an imap process with a logged-in client lives on
//     for 10s more (its client sees nothing), then logs "Disconnected:
//     Server shutting down." So Stop, once the master is gone, sends SIGTERM
//     to its process group: the sessions end at once. SIGTERM to the whole
//     group straight away takes 20ms but makes every process log a
//     "Killed with signal 15" warning and loses log lines.
//   - Dovecot's built-in defaults hold inet_listener imap (143) and imaps
//     (993) for imap-login: both are set here, imaps to port 0 without TLS.
//     Without TLS "ssl = no"; with it ssl_cert/ssl_key "<file"; no ssl_dh is
//     needed (TLS 1.3, ECDHE).
//   - The auth service takes an inet_listener, and postfix's smtpd_sasl_path =
//     inet:127.0.0.1:<port> speaks to it. smtpd_tls_auth_only = no offers
//     "AUTH PLAIN LOGIN" before STARTTLS as well as after it.
//   - passwd-file passdb/userdb with username_format=%n: "relay" and
//     "relay@localhost" both log in as relay (IMAP and SMTP AUTH), and
//     "protocol lmtp { auth_username_format = %Ln }" makes LMTP's
//     relay@localhost the user relay. default_fields gives uid/gid/home.
//   - Dovecot refuses mail uids below first_valid_uid (default 500) and root;
//     useradd -r may give vmail a lower uid, so first/last_valid_uid/gid are
//     set to vmail's. A plain-text IMAP login from 127.0.0.1 counts as
//     "secured" (no STARTTLS needed); disable_plaintext_auth = no anyway.
//   - postfix's -c <config_directory> with its own queue_directory and
//     data_directory (master.lock, TLS caches) is a separate instance; as
//     root no alternate_config_directories entry is needed. `postfix -c <dir>
//     check` creates the missing queue directories (post-install
//     create-missing) in ~0.2s. `master -c <dir>` without -w stays in the
//     foreground and calls setsid (own session and process group; started
//     as a group leader, with Setpgid, it exits 1 at once and logs nothing);
//     its PID is in <queue>/pid/master.pid. A port in use makes it exit 1
//     after about 1s, also logging nothing. Pdeathsig does not hold for it
//     (presumably cleared by its credential changes, as the kernel does): it
//     outlived a killed parent here, hence a watchdog (see
//     mailDaemon.start). SIGTERM (what `postfix stop` sends) makes it
//     SIGTERM its process group and exit at once. Its children (smtpd,
//     qmgr, lmtp, ...) then show as zombies of PID 1 for a moment in this
//     sandbox.
//   - Postfix lets a young main.cf "settle": right after main.cf was
//     written, `postfix check` read it again every 300ms for 1.8s (strace),
//     taking 2s instead of 0.2s, and each daemon reads main.cf at its start.
//     The files written here are dated a minute back.
//   - Debian's master.cf chroots most services: `postconf -F '*/*/chroot = n'`
//     (the chroot is only prepared by Debian's init script). The "smtp inet"
//     service (port 25) is removed (postconf -MX smtp/inet) and one
//     "<port> inet n - n - - smtpd" added (postconf -M) with inet_interfaces
//     = 127.0.0.1.
//   - maillog_file (no syslog here; it needs the postlog service, which
//     Debian's master.cf has) must start with one of maillog_file_prefixes
//     (default "/var, /dev/stdout"): a path in /tmp makes `postfix check` and
//     master exit 1 without printing anything. maillog_file_prefixes is set
//     to the temp folder.
//   - message_size_limit is announced in EHLO (SIZE n); curl and most clients
//     send MAIL FROM ... SIZE=, and a larger message is refused right there
//     with "552 5.3.4 Message size exceeds fixed limit". mailbox_size_limit
//     and virtual_mailbox_limit (default 51200000) are set to 0 so that a
//     larger limit cannot trip them.
//   - An unknown recipient in virtual_mailbox_domains is refused at RCPT TO
//     ("550 5.1.1 ... User unknown in virtual mailbox table"); with
//     default_transport and relay_transport = error nothing leaves the
//     machine although 127.0.0.0/8 is in mynetworks.
//   - postfix retries deferred mail after queue_run_delay and
//     minimal_backoff_time (300s by default): set to 1s here so that mail
//     deferred while the LMTP dovecot was unreachable is not late by minutes.
//   - Logs: dovecot to log_path (failed logins with auth_verbose = yes),
//     postfix to maillog_file; the daemons' own stdout/stderr go to *.out
//     files, never to the caller's (a caller piping them would hang).
//   - The ports are chosen below the kernel's ephemeral range, as for vsftpd
//     (see vsftpd.go).

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// MailPassword is the password of every mailbox user, for IMAP login
	// and SMTP AUTH alike.
	MailPassword = "relay-e2e-mail-Pw1"
	// MailDomain is the only mail domain (virtual_mailbox_domains).
	MailDomain = "localhost"
	// VmailUser is the local system user that owns the Maildirs; it is
	// created on first use (root only) and kept.
	VmailUser = "vmail"
	// DefaultMessageSizeLimit is postfix's message_size_limit when
	// MailOptions.MessageSizeLimit is 0.
	DefaultMessageSizeLimit = 50 << 20
)

// The reasons StartMail cannot run a server at all on this machine (as
// opposed to a failure): tests skip on them unless servers are required.
var (
	ErrMailNotInstalled = errors.New("postfix or dovecot (dovecot-imapd, dovecot-lmtpd) not installed")
	ErrMailNotRoot      = errors.New("postfix and dovecot need root (useradd " + VmailUser + ", chown of the Maildirs, their daemons)")
)

// MailOptions configures StartMail.
type MailOptions struct {
	// TLS: a self-signed cert (Mail.CAFile); postfix offers STARTTLS on its
	// SMTP port, dovecot STARTTLS on the IMAP port and IMAPS on IMAPSPort.
	TLS bool
	// MessageSizeLimit is postfix's message_size_limit in bytes
	// (0 = DefaultMessageSizeLimit, 50 MB).
	MessageSizeLimit int64
	// Users are the mailboxes to create (default {"relay", "wh"}); each has
	// the address user@localhost and the password MailPassword.
	Users []string
	// Logf, if set, receives notes such as a start attempt that failed and
	// was retried on other ports.
	Logf func(format string, args ...any)
}

// Mail is one postfix + dovecot set started on 127.0.0.1 by StartMail.
type Mail struct {
	Host      string // "127.0.0.1"
	SMTPPort  int    // postfix smtpd: STARTTLS when TLS, AUTH PLAIN/LOGIN always
	IMAPPort  int    // dovecot IMAP: STARTTLS when TLS
	IMAPSPort int    // dovecot IMAPS, 0 without TLS
	LMTPPort  int    // dovecot LMTP, where postfix delivers
	AuthPort  int    // dovecot auth service, postfix's SASL backend
	CAFile    string // PEM of the self-signed cert when TLS, else ""
	Dir       string // temp folder: configs, logs, Maildirs (mail/<user>/Maildir)
	Users     []string
	TLS       bool
	// MessageSizeLimit is postfix's message_size_limit in bytes.
	MessageSizeLimit int64
	UID, GID         int // VmailUser, owner of the Maildirs

	logf func(format string, args ...any)
	// ports holds the five ports until Close.
	ports *portBlock

	mu      sync.Mutex
	closed  bool // Stop was called
	lmtp    *mailDaemon
	imap    *mailDaemon
	postfix *mailDaemon
}

var mailUserRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// StartMail starts dovecot (LMTP + auth, and IMAP) and postfix on 127.0.0.1
// with their own configs, Maildirs and free ports, and waits until every
// port listens. The error wraps ErrMailNotInstalled or ErrMailNotRoot when
// no server can run here. The caller must Stop (or Close) it.
func StartMail(o MailOptions) (*Mail, error) {
	bins, err := findMailBins()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, ErrMailNotRoot
	}
	users := o.Users
	if len(users) == 0 {
		users = []string{"relay", "wh"}
	}
	for i, u := range users {
		if !mailUserRE.MatchString(u) {
			return nil, fmt.Errorf("StartMail: user %q: want lower-case letters, digits, '.', '_', '-'", u)
		}
		if slices.Contains(users[:i], u) {
			return nil, fmt.Errorf("StartMail: user %q twice", u)
		}
	}
	limit := o.MessageSizeLimit
	if limit == 0 {
		limit = DefaultMessageSizeLimit
	}
	if limit < 0 {
		return nil, fmt.Errorf("StartMail: MessageSizeLimit %d < 0", limit)
	}
	uid, gid, err := VmailIDs()
	if err != nil {
		return nil, fmt.Errorf("mail user %s: %w", VmailUser, err)
	}

	dir, err := os.MkdirTemp("", "relay-mail-")
	if err != nil {
		return nil, err
	}
	m := &Mail{
		Host: "127.0.0.1", Dir: dir, Users: slices.Clone(users), TLS: o.TLS,
		MessageSizeLimit: limit, UID: uid, GID: gid, logf: o.Logf,
	}
	if err := m.prepare(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}

	// Another process may take a port between the check and the daemons'
	// bind: try fresh ports a few times.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := reservePorts(5)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		base := ports.Base
		m.ports = ports
		m.SMTPPort, m.IMAPPort, m.LMTPPort, m.AuthPort = base, base+1, base+3, base+4
		m.IMAPSPort = 0
		if m.TLS {
			m.IMAPSPort = base + 2
		}
		if lastErr = m.launch(bins); lastErr == nil {
			return m, nil
		}
		m.stopAll()
		ports.release()
		m.note("mail servers attempt %d on ports %d-%d: %v", attempt+1, base, base+4, lastErr)
	}
	err = fmt.Errorf("mail servers did not start: %v\n%s", lastErr, m.LogTail())
	os.RemoveAll(dir)
	return nil, err
}

func (m *Mail) note(format string, args ...any) {
	if m.logf != nil {
		m.logf(format, args...)
	}
}

// mailBins are the programs StartMail runs.
type mailBins struct {
	dovecot, postfix, postconf, master string
}

// findMailBins finds dovecot (with its imap and lmtp programs) and postfix.
func findMailBins() (mailBins, error) {
	var b mailBins
	var err error
	for _, p := range []struct {
		name string
		dst  *string
	}{{"dovecot", &b.dovecot}, {"postfix", &b.postfix}, {"postconf", &b.postconf}} {
		if *p.dst, err = SbinPath(p.name); err != nil {
			return b, fmt.Errorf("%w: %v", ErrMailNotInstalled, err)
		}
	}
	// dovecot-imapd and dovecot-lmtpd put their programs next to dovecot's
	// other ones; without them dovecot only fails at start.
	for _, prog := range []string{"imap", "lmtp"} {
		found := false
		for _, d := range []string{"/usr/lib/dovecot", "/usr/libexec/dovecot"} {
			if _, err := os.Stat(filepath.Join(d, prog)); err == nil {
				found = true
				break
			}
		}
		if !found {
			return b, fmt.Errorf("%w: no dovecot %s program in /usr/lib/dovecot", ErrMailNotInstalled, prog)
		}
	}
	out, err := exec.Command(b.postconf, "-dh", "daemon_directory").Output()
	if err != nil {
		return b, fmt.Errorf("%w: postconf -dh daemon_directory: %v", ErrMailNotInstalled, err)
	}
	b.master = filepath.Join(strings.TrimSpace(string(out)), "master")
	if _, err := os.Stat(b.master); err != nil {
		return b, fmt.Errorf("%w: postfix master: %v", ErrMailNotInstalled, err)
	}
	return b, nil
}

var vmailSetup struct {
	once     sync.Once
	uid, gid int
	err      error
}

// VmailIDs creates the local user VmailUser once per process if it is
// missing and returns its uid and gid.
func VmailIDs() (uid, gid int, err error) {
	vmailSetup.once.Do(func() {
		vmailSetup.uid, vmailSetup.gid, vmailSetup.err = setupVmail()
	})
	return vmailSetup.uid, vmailSetup.gid, vmailSetup.err
}

func setupVmail() (int, int, error) {
	// No login: PAM is not involved, dovecot only needs the ids.
	shell := "/bin/false"
	for _, s := range []string{"/usr/sbin/nologin", "/sbin/nologin"} {
		if _, err := os.Stat(s); err == nil {
			shell = s
			break
		}
	}
	args := []string{"-r", "-M", "-d", "/nonexistent", "-s", shell, "-c", "relay e2e mail storage"}
	if _, err := user.LookupGroup(VmailUser); err == nil {
		args = append(args, "-g", VmailUser)
	} else {
		args = append(args, "-U")
	}
	_, uid, gid, err := ensureUser(VmailUser, args...)
	if err != nil {
		return 0, 0, err
	}
	if uid == 0 || gid == 0 {
		return 0, 0, fmt.Errorf("%s has uid %d gid %d: dovecot refuses root for mail", VmailUser, uid, gid)
	}
	return uid, gid, nil
}

// prepare makes the folders, Maildirs, passwd-file and, with TLS, the cert.
func (m *Mail) prepare() error {
	// dovecot's mail processes (vmail) and postfix's daemons (postfix) must
	// traverse the temp folder: os.MkdirTemp makes it 0700.
	if err := os.Chmod(m.Dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"imap", "lmtp", "postfix", "postfix/etc", "postfix/queue", "mail"} {
		if err := os.Mkdir(filepath.Join(m.Dir, d), 0o755); err != nil {
			return err
		}
	}
	data := filepath.Join(m.Dir, "postfix", "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	if pf, err := user.Lookup("postfix"); err == nil {
		puid, _ := strconv.Atoi(pf.Uid)
		pgid, _ := strconv.Atoi(pf.Gid)
		if err := os.Chown(data, puid, pgid); err != nil {
			return err
		}
	}
	if err := os.Chown(filepath.Join(m.Dir, "mail"), m.UID, m.GID); err != nil {
		return err
	}
	var passwd, vmailbox strings.Builder
	for _, u := range m.Users {
		fmt.Fprintf(&passwd, "%s:{PLAIN}%s::::::\n", u, MailPassword)
		fmt.Fprintf(&vmailbox, "%s OK\n", m.Address(u))
		home := filepath.Join(m.Dir, "mail", u)
		for _, d := range []string{home, filepath.Join(home, "Maildir"), filepath.Join(home, "Maildir", "cur"), filepath.Join(home, "Maildir", "new"), filepath.Join(home, "Maildir", "tmp")} {
			if err := os.Mkdir(d, 0o700); err != nil {
				return err
			}
			if err := os.Chown(d, m.UID, m.GID); err != nil {
				return err
			}
		}
	}
	// Read by dovecot's auth processes (user dovecot).
	if err := os.WriteFile(filepath.Join(m.Dir, "passwd"), []byte(passwd.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m.Dir, "postfix", "etc", "vmailbox"), []byte(vmailbox.String()), 0o644); err != nil {
		return err
	}
	if m.TLS {
		certFile, keyFile := filepath.Join(m.Dir, "cert.pem"), filepath.Join(m.Dir, "key.pem")
		if err := writeSelfSignedCert(certFile, keyFile); err != nil {
			return err
		}
		m.CAFile = certFile
	}
	return nil
}

// dovecotConfig renders the config of the dovecot instance role ("imap" or
// "lmtp").
func (m *Mail) dovecotConfig(role string) string {
	d := filepath.Join(m.Dir, role)
	var b strings.Builder
	kv := func(k string, v any) { fmt.Fprintf(&b, "%s = %v\n", k, v) }
	fmt.Fprintf(&b, "# relay e2e dovecot (%s), written by test/realserver/mail.go\n", role)
	kv("instance_name", "relay-"+role)
	kv("base_dir", filepath.Join(d, "run"))
	kv("state_dir", filepath.Join(d, "state"))
	kv("log_path", filepath.Join(d, "dovecot.log"))
	kv("auth_verbose", "yes")
	kv("listen", m.Host)
	kv("first_valid_uid", m.UID)
	kv("last_valid_uid", m.UID)
	kv("first_valid_gid", m.GID)
	kv("last_valid_gid", m.GID)
	kv("mail_location", "maildir:~/Maildir")
	kv("auth_mechanisms", "plain login")
	kv("disable_plaintext_auth", "no")
	passwd := filepath.Join(m.Dir, "passwd")
	fmt.Fprintf(&b, "passdb {\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%%n %s\n}\n", passwd)
	fmt.Fprintf(&b, "userdb {\n  driver = passwd-file\n  args = username_format=%%n %s\n  default_fields = uid=%s gid=%s home=%s/%%n\n}\n",
		passwd, VmailUser, VmailUser, filepath.Join(m.Dir, "mail"))
	listener := func(kind, name string, port int, ssl bool) {
		fmt.Fprintf(&b, "  %s %s {\n    address = %s\n    port = %d\n", kind, name, m.Host, port)
		if ssl {
			b.WriteString("    ssl = yes\n")
		}
		b.WriteString("  }\n")
	}
	switch role {
	case "imap":
		kv("protocols", "imap")
		if m.TLS {
			kv("ssl", "yes")
			kv("ssl_cert", "<"+m.CAFile)
			kv("ssl_key", "<"+filepath.Join(m.Dir, "key.pem"))
		} else {
			kv("ssl", "no")
		}
		b.WriteString("service imap-login {\n")
		listener("inet_listener", "imap", m.IMAPPort, false)
		// The built-in imaps listener (993) is disabled by port 0.
		listener("inet_listener", "imaps", m.IMAPSPort, m.TLS)
		b.WriteString("}\n")
	case "lmtp":
		kv("protocols", "lmtp")
		kv("ssl", "no")
		b.WriteString("service lmtp {\n")
		listener("inet_listener", "lmtp", m.LMTPPort, false)
		b.WriteString("}\n")
		b.WriteString("service auth {\n")
		listener("inet_listener", "auth", m.AuthPort, false)
		b.WriteString("}\n")
		// LMTP gets user@localhost; the passwd-file knows "user".
		b.WriteString("protocol lmtp {\n  auth_username_format = %Ln\n}\n")
	}
	return b.String()
}

// postfixMainCf renders postfix's main.cf.
func (m *Mail) postfixMainCf() string {
	p := filepath.Join(m.Dir, "postfix")
	var b strings.Builder
	kv := func(k string, v any) { fmt.Fprintf(&b, "%s = %v\n", k, v) }
	b.WriteString("# relay e2e postfix, written by test/realserver/mail.go\n")
	kv("compatibility_level", "3.6")
	kv("queue_directory", filepath.Join(p, "queue"))
	kv("data_directory", filepath.Join(p, "data"))
	kv("maillog_file_prefixes", m.Dir)
	kv("maillog_file", filepath.Join(p, "postfix.log"))
	kv("myhostname", "localhost")
	kv("mydomain", "localdomain")
	kv("myorigin", "localhost")
	kv("inet_interfaces", m.Host)
	kv("inet_protocols", "ipv4")
	kv("mynetworks", "127.0.0.0/8")
	kv("mydestination", "")
	kv("local_recipient_maps", "")
	kv("alias_maps", "")
	kv("alias_database", "")
	kv("biff", "no")
	kv("append_dot_mydomain", "no")
	kv("relayhost", "")
	kv("default_transport", "error:mail to other domains is disabled")
	kv("relay_transport", "error:mail to other domains is disabled")
	kv("virtual_mailbox_domains", MailDomain)
	kv("virtual_mailbox_maps", "texthash:"+filepath.Join(p, "etc", "vmailbox"))
	kv("virtual_transport", fmt.Sprintf("lmtp:inet:%s:%d", m.Host, m.LMTPPort))
	kv("message_size_limit", m.MessageSizeLimit)
	kv("mailbox_size_limit", 0)
	kv("virtual_mailbox_limit", 0)
	kv("smtpd_sasl_type", "dovecot")
	kv("smtpd_sasl_path", fmt.Sprintf("inet:%s:%d", m.Host, m.AuthPort))
	kv("smtpd_sasl_auth_enable", "yes")
	kv("smtpd_tls_auth_only", "no")
	kv("smtpd_relay_restrictions", "permit_mynetworks permit_sasl_authenticated reject_unauth_destination")
	if m.TLS {
		kv("smtpd_tls_cert_file", m.CAFile)
		kv("smtpd_tls_key_file", filepath.Join(m.Dir, "key.pem"))
		kv("smtpd_tls_security_level", "may")
	} else {
		kv("smtpd_tls_security_level", "none")
	}
	kv("smtp_tls_security_level", "none")
	kv("queue_run_delay", "1s")
	kv("minimal_backoff_time", "1s")
	kv("maximal_backoff_time", "10s")
	return b.String()
}

// configurePostfix writes main.cf and master.cf (Debian's, without chroot,
// with the SMTP service on SMTPPort instead of 25) and creates the queue.
func (m *Mail) configurePostfix(bins mailBins) error {
	etc := filepath.Join(m.Dir, "postfix", "etc")
	if err := os.WriteFile(filepath.Join(etc, "main.cf"), []byte(m.postfixMainCf()), 0o644); err != nil {
		return err
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMailNotInstalled, err)
	}
	if err := os.WriteFile(filepath.Join(etc, "master.cf"), master, 0o644); err != nil {
		return err
	}
	run := func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, out)
		}
		return nil
	}
	for _, args := range [][]string{
		{"-MX", "smtp/inet"},
		{"-M", fmt.Sprintf("%d/inet=%d inet n - n - - smtpd", m.SMTPPort, m.SMTPPort)},
		{"-F", "*/*/chroot = n"},
	} {
		if err := run(bins.postconf, append([]string{"-c", etc}, args...)...); err != nil {
			return err
		}
	}
	// Postfix re-reads a main.cf younger than about 2s every 300ms until it
	// has "settled" (see the header): date the files back.
	past := time.Now().Add(-time.Minute)
	for _, f := range []string{"main.cf", "master.cf", "vmailbox"} {
		if err := os.Chtimes(filepath.Join(etc, f), past, past); err != nil {
			return err
		}
	}
	return run(bins.postfix, "-c", etc, "check")
}

// launch writes the configs for the current ports and starts the three
// daemons; it returns once every port listens. On failure the caller stops
// what was started.
func (m *Mail) launch(bins mailBins) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, role := range []string{"lmtp", "imap"} {
		conf := filepath.Join(m.Dir, role, "dovecot.conf")
		if err := os.WriteFile(conf, []byte(m.dovecotConfig(role)), 0o644); err != nil {
			return err
		}
	}
	m.lmtp = m.newDovecot(bins, "lmtp", m.LMTPPort, m.AuthPort)
	imapPorts := []int{m.IMAPPort}
	if m.TLS {
		imapPorts = append(imapPorts, m.IMAPSPort)
	}
	m.imap = m.newDovecot(bins, "imap", imapPorts...)
	m.postfix = &mailDaemon{
		name:  "postfix",
		path:  bins.master,
		args:  []string{"-c", filepath.Join(m.Dir, "postfix", "etc")},
		out:   filepath.Join(m.Dir, "postfix", "master.out"),
		ports: []int{m.SMTPPort},
		// master calls setsid itself; started as a group leader, it exits.
		setpgid:  false,
		watchdog: true,
	}
	// The dovecots start while postfix is configured.
	for _, d := range []*mailDaemon{m.lmtp, m.imap} {
		if err := d.start(); err != nil {
			return err
		}
	}
	if err := m.configurePostfix(bins); err != nil {
		return err
	}
	if err := m.postfix.start(); err != nil {
		return err
	}
	for _, d := range []*mailDaemon{m.lmtp, m.imap, m.postfix} {
		if err := d.waitListening(15 * time.Second); err != nil {
			return err
		}
	}
	return nil
}

func (m *Mail) newDovecot(bins mailBins, role string, ports ...int) *mailDaemon {
	return &mailDaemon{
		name:    "dovecot " + role,
		path:    bins.dovecot,
		args:    []string{"-F", "-c", filepath.Join(m.Dir, role, "dovecot.conf")},
		out:     filepath.Join(m.Dir, role, "dovecot.out"),
		ports:   ports,
		setpgid: true,
	}
}

// stopAll stops the three daemons concurrently (postfix's stop is instant,
// dovecot's takes about 1s) and forgets them.
func (m *Mail) stopAll() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ds := []*mailDaemon{m.postfix, m.imap, m.lmtp}
	errs := make([]error, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		if d == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.stop()
		}()
	}
	wg.Wait()
	m.postfix, m.imap, m.lmtp = nil, nil, nil
	return errors.Join(errs...)
}

// Stop stops postfix and both dovecots by PID, and every process they
// started, concurrently: SIGTERM to each master (for postfix what `postfix
// stop` sends), then to what is left of its process group once it has
// exited, SIGKILL after a timeout, and waits (about 1.1s in all, for
// dovecot's master). It may be called any number of times; the error says
// what survived SIGKILL. The temp folder stays (LogTail, Maildir still
// work); Close removes it.
func (m *Mail) Stop() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return m.stopAll()
}

// Close stops the servers and removes the temp folder.
func (m *Mail) Close() error {
	err := m.Stop()
	m.ports.release()
	if rerr := os.RemoveAll(m.Dir); err == nil {
		err = rerr
	}
	return err
}

// StopIMAP stops the IMAP dovecot only (its port refuses, logged-in IMAP
// sessions are closed); SMTP, SMTP AUTH and delivery into the Maildirs go
// on. StartIMAP brings it back on the same ports.
func (m *Mail) StopIMAP() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.imap == nil {
		return nil
	}
	return m.imap.stop()
}

// StartIMAP starts the IMAP dovecot again on the same ports after StopIMAP.
// It does nothing while it runs, and fails after Stop.
func (m *Mail) StartIMAP() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("StartIMAP after Stop")
	}
	if m.imap == nil {
		return errors.New("StartIMAP: mail servers not started")
	}
	if m.imap.running() {
		return nil
	}
	var err error
	// The ports were ours a moment ago; give a lingering socket a few tries.
	for attempt := 0; attempt < 3; attempt++ {
		if err = m.imap.start(); err == nil {
			if err = m.imap.waitListening(15 * time.Second); err == nil {
				return nil
			}
		}
		m.imap.stop()
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("dovecot imap restart on %s: %v", m.IMAPAddr(), err)
}

// PIDs are the PIDs of the running masters (postfix, dovecot lmtp, dovecot
// imap); every other process of theirs is in one of their process groups.
func (m *Mail) PIDs() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var pids []int
	for _, d := range []*mailDaemon{m.postfix, m.lmtp, m.imap} {
		if d != nil && d.running() {
			pids = append(pids, d.cmd.Process.Pid)
		}
	}
	return pids
}

// Password is user's password (MailPassword) for IMAP and SMTP AUTH, "" for
// a user StartMail did not create.
func (m *Mail) Password(user string) string {
	if slices.Contains(m.Users, user) {
		return MailPassword
	}
	return ""
}

// SMTPAddr is "127.0.0.1:<SMTPPort>".
func (m *Mail) SMTPAddr() string { return net.JoinHostPort(m.Host, strconv.Itoa(m.SMTPPort)) }

// IMAPAddr is "127.0.0.1:<IMAPPort>".
func (m *Mail) IMAPAddr() string { return net.JoinHostPort(m.Host, strconv.Itoa(m.IMAPPort)) }

// IMAPSAddr is "127.0.0.1:<IMAPSPort>", "" without TLS.
func (m *Mail) IMAPSAddr() string {
	if m.IMAPSPort == 0 {
		return ""
	}
	return net.JoinHostPort(m.Host, strconv.Itoa(m.IMAPSPort))
}

// Address is user's mail address, user@localhost.
func (m *Mail) Address(user string) string { return user + "@" + MailDomain }

// Maildir is the local path of user's Maildir (with cur/, new/, tmp/):
// delivered mail appears in new/, and moves to cur/ once an IMAP client has
// seen it.
func (m *Mail) Maildir(user string) string {
	return filepath.Join(m.Dir, "mail", user, "Maildir")
}

// TLSConfig is a client config that trusts CAFile, with ServerName
// 127.0.0.1; nil without TLS.
func (m *Mail) TLSConfig() (*tls.Config, error) {
	if !m.TLS {
		return nil, nil
	}
	pem, err := os.ReadFile(m.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", m.CAFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: m.Host, MinVersion: tls.VersionTLS12}, nil
}

// LogTail is the end of each daemon's log and own output.
func (m *Mail) LogTail() string {
	var b strings.Builder
	for _, name := range []string{
		"postfix/postfix.log", "postfix/master.out",
		"lmtp/dovecot.log", "lmtp/dovecot.out",
		"imap/dovecot.log", "imap/dovecot.out",
	} {
		data, err := os.ReadFile(filepath.Join(m.Dir, name))
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", name, strings.Join(lines, "\n"))
	}
	return b.String()
}

// mailDaemon is one foreground master process (postfix's master or
// dovecot -F).
type mailDaemon struct {
	name    string
	path    string
	args    []string
	out     string // its stdout and stderr
	ports   []int  // loopback ports it listens on
	setpgid bool
	// watchdog: guard the master with a watchdog process (see start); for
	// postfix, whose master loses Pdeathsig.
	watchdog bool

	cmd  *exec.Cmd
	done <-chan struct{} // closed when cmd has been waited for
	wd   *exec.Cmd       // the watchdog
	wdW  *os.File        // write end of the watchdog's stdin
}

// start starts the master. If the calling process dies without stopping it
// (a test -timeout panic, a kill), the master gets SIGTERM and stops its
// children:
//   - by Pdeathsig, which follows the thread that forked, not the process:
//     that goroutine stays locked to its thread and blocked in Wait for the
//     master's whole life. The kernel clears Pdeathsig when a process changes
//     its credentials, which postfix's master does (it survived its parent
//     here), dovecot's does not;
//   - so with watchdog, also by a `sh -c 'read x; kill -TERM <pid>'` whose
//     stdin is a pipe only this process holds open: its read returns when
//     this process is gone, however it ended. The watchdog has its own
//     process group, so a Ctrl-C to the caller's does not end it first.
func (d *mailDaemon) start() error {
	out, err := os.OpenFile(d.out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.path, d.args...)
	cmd.Dir = filepath.Dir(d.out)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: d.setpgid}
	done, err := StartDaemon(cmd, out)
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	d.cmd, d.done = cmd, done
	if !d.watchdog {
		return nil
	}
	r, w, err := os.Pipe() // close-on-exec: no other child inherits w
	if err != nil {
		return err
	}
	defer r.Close()
	wd := exec.Command("/bin/sh", "-c", "read x; kill -TERM "+strconv.Itoa(cmd.Process.Pid))
	wd.Stdin = r
	wd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := wd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("%s watchdog: %w", d.name, err)
	}
	d.wd, d.wdW = wd, w
	return nil
}

// running reports whether the master was started and has not exited.
func (d *mailDaemon) running() bool {
	if d.cmd == nil {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// waitListening waits until the master holds a listening socket on each of
// its ports. It reads /proc instead of connecting, which would log a
// session, and so also knows that the socket is the master's and not
// another process's on the same port.
func (d *mailDaemon) waitListening(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if !d.running() {
			return fmt.Errorf("%s exited at start: %v", d.name, d.cmd.ProcessState)
		}
		if listensOn(d.cmd.Process.Pid, d.ports) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not listen on 127.0.0.1 ports %v within %v", d.name, d.ports, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listensOn reports whether process pid holds a socket listening on
// 127.0.0.1:port for every port, from /proc/net/tcp and /proc/<pid>/fd.
func listensOn(pid int, ports []int) bool {
	tcp, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	inodes := map[int][]string{} // port -> inodes of LISTEN sockets
	for _, l := range strings.Split(string(tcp), "\n")[1:] {
		f := strings.Fields(l)
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if len(f) < 10 || f[3] != "0A" || !strings.HasPrefix(f[1], "0100007F:") {
			continue
		}
		port, err := strconv.ParseInt(strings.TrimPrefix(f[1], "0100007F:"), 16, 32)
		if err != nil {
			continue
		}
		inodes[int(port)] = append(inodes[int(port)], f[9])
	}
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	held := map[string]bool{}
	for _, fd := range fds {
		if t, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && strings.HasPrefix(t, "socket:[") {
			held[strings.TrimSuffix(strings.TrimPrefix(t, "socket:["), "]")] = true
		}
	}
	for _, p := range ports {
		if !slices.ContainsFunc(inodes[p], func(i string) bool { return held[i] }) {
			return false
		}
	}
	return true
}

// stop stops the master and every process of its process group (dovecot's
// children, with Setpgid; postfix's, whose master calls setsid): SIGTERM to
// the master, waiting up to 10s for it to exit, then SIGTERM to what is left
// of its group, and SIGKILL to all of them after 5s more. Orphaned children
// show as zombies of PID 1 for a while in this sandbox: those count as gone.
func (d *mailDaemon) stop() error {
	if d.wd != nil {
		// Ended first, so that it cannot signal a PID reused later.
		d.wd.Process.Kill()
		d.wd.Wait()
		d.wdW.Close()
		d.wd, d.wdW = nil, nil
	}
	if d.cmd == nil {
		return nil
	}
	pid, done := d.cmd.Process.Pid, d.done
	exited := func() bool { return closed(done) }
	// Its process group outlives the master as long as one member does, so
	// the number is not reused meanwhile: matching on PGID is safe, on a
	// PID seen earlier it would not be.
	left := func() []int {
		var ps []int
		for _, p := range ProcTable() {
			if p.PID != pid && p.State != 'Z' && p.State != 'X' && (p.PGID == pid || (p.PPID == pid && !exited())) {
				ps = append(ps, p.PID)
			}
		}
		return ps
	}
	gone := func() bool { return exited() && len(left()) == 0 }
	wait := func(timeout time.Duration) bool { return waitUntil(timeout, 20*time.Millisecond, gone) }
	var err error
	if !exited() {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	waitUntil(10*time.Second, 20*time.Millisecond, exited)
	// dovecot's master exits after about 1s, leaving logged-in IMAP
	// sessions (and its log process) running for 10s more: SIGTERM ends
	// them at once. The group is signalled only while it has members, so
	// that its number cannot belong to anyone else.
	if len(left()) > 0 {
		syscall.Kill(-pid, syscall.SIGTERM)
	}
	if !wait(5 * time.Second) {
		if ps := left(); len(ps) > 0 {
			syscall.Kill(-pid, syscall.SIGKILL)
			for _, p := range ps {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if !exited() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if !wait(5 * time.Second) {
			err = fmt.Errorf("%s %d or its processes %v did not exit after SIGKILL", d.name, pid, left())
		}
	}
	d.cmd, d.done = nil, nil
	return err
}
