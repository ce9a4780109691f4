// Package realserver starts real servers (Debian's daemons) on 127.0.0.1
// for the end-to-end tests and the bench: each with its own config, root and
// ports in a temp folder, stopped by PID. It is a normal package, not a test
// one, so that `go run ./bench` can use it as well as `go test`.
package realserver

// A real vsftpd (Debian's /usr/sbin/vsftpd) on 127.0.0.1: plain FTP,
// explicit FTPS (AUTH TLS) and implicit FTPS, one server per caller.
//
// Facts about Debian's vsftpd 3.0.3 that this code relies on, checked
// here (see also /work/shared/REALSERVERS.md):
//   - It runs in the foreground (background=NO) from its own config file;
//     inside this sandbox it also needs seccomp_sandbox=NO, isolate=NO and
//     isolate_network=NO.
//   - PAM (pam_service_name=vsftpd, Debian's /etc/pam.d/vsftpd) refuses a
//     user whose shell is not in /etc/shells (pam_shells): on Debian that
//     rules out /usr/sbin/nologin and /bin/false.
//   - After PAM, a local login enters the user's HOME first and only then
//     local_root: with useradd -M the home does not exist and every login
//     ends in "500 OOPS: cannot change directory:/home/relayftp". So the
//     user setup creates the (empty) home.
//   - It enters local_root as the user, so every directory on the way must
//     be traversable by that user: os.MkdirTemp makes 0700, hence the chmod
//     (and a VsftpdOptions.Dir must be traversable too). A chroot that the
//     user can write to is refused unless allow_writeable_chroot=YES.
//     secure_chroot_dir must exist.
//   - Such "500 OOPS" fatal errors are not in vsftpd_log_file, and over TLS
//     they are sent in clear text on the encrypted control connection:
//     jlaffaye/ftp then reports "tls: received record with version 3030 when
//     expecting version 303" (0x3030 = "00" of "500 OOPS"). Read it as
//     "the server aborted the session", e.g. a missing home or a 0700 parent.
//   - Each connection is served by two processes forked from the listener
//     that call setsid (own session and process group) and outlive the
//     listener: killing only the listener leaves logged-in clients connected
//     (NOOP still answered), so a "server down" test would not be one. Stop
//     therefore signals the listener's children by PID too. SIGTERM ends a
//     session. Orphaned session processes show as zombies of PID 1 for a
//     while in this sandbox.
//   - With TLS, the default require_ssl_reuse=YES refuses a data connection
//     whose TLS session is not resumed from the control connection: "522 SSL
//     connection failed: session reuse required" (log: "No SSL session reuse
//     on data channel."). The client's tls.Config needs ClientSessionCache and
//     ServerName. Left on, as on real servers.
//   - No MLSD/MLST: LIST only, with minute-precision times; dot-files are
//     hidden from LIST (the e2e harness test checks it).
//   - UTF-8 (Cyrillic) names work with utf8_filesystem=YES; vsftpd.log shows
//     their non-ASCII bytes as "?", and PASS as "<password>".
//   - The ports are chosen below the kernel's ephemeral range
//     (/proc/sys/net/ipv4/ip_local_port_range), not with 127.0.0.1:0: a
//     client retrying 127.0.0.1:P while the server is down may otherwise get
//     P itself as its source port (a TCP self-connect to the closed port), and
//     then Start cannot bind P again.
//   - At most 50 connections per client address are served, although
//     vsftpd.conf(5) says max_per_ip defaults to 0 (unlimited): the 51st
//     from 127.0.0.1 gets "421 There are too many connections from your
//     internet address." and is closed. The config here leaves it so.

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jlaffaye/ftp"
)

const (
	// FTPUser is the local system user every vsftpd started here logs in;
	// it is created on first use (root only) and kept.
	FTPUser     = "relayftp"
	FTPPassword = "relay-e2e-ftp-Pw1"
	// PasvPorts is the size of each server's passive port range.
	PasvPorts = 20
)

// The reasons StartVsftpd cannot run a server at all on this machine (as
// opposed to a failure): tests skip on them unless servers are required.
var (
	ErrNotInstalled = errors.New("vsftpd not installed")
	ErrNotRoot      = errors.New("vsftpd needs root (useradd " + FTPUser + ", chown of the FTP root)")
)

// TLS modes of VsftpdOptions.TLS and Vsftpd.TLS.
const (
	TLSNone     = "none"
	TLSExplicit = "explicit"
	TLSImplicit = "implicit"
)

// VsftpdOptions configures StartVsftpd.
type VsftpdOptions struct {
	TLS string // "none" (or ""), "explicit" (AUTH TLS on the control port), "implicit"
	// Dir is the parent of the server's temp folder ("" = os.TempDir()); the
	// FTP user must be able to traverse it.
	Dir string
	// Logf, if set, receives notes such as a start attempt that failed and
	// was retried on other ports.
	Logf func(format string, args ...any)
}

// Vsftpd is one vsftpd started on 127.0.0.1.
type Vsftpd struct {
	Host           string // "127.0.0.1"
	Port           int
	User, Password string
	Root           string // local path of the user's FTP root (local_root, chrooted); callers put/read files here directly
	CAFile         string // PEM of the self-signed cert when TLS is on, else ""
	TLS            string // "none" | "explicit" | "implicit"
	UID, GID       int    // owner of Root and of what the server writes

	bin   string
	dir   string // temp dir: vsftpd.conf, logs, cert, root/, empty/
	conf  string
	ports *portBlock // Port and the passive ports, held until Close

	mu   sync.Mutex
	cmd  *exec.Cmd
	done <-chan struct{} // closed when cmd has been waited for
}

// SbinPath finds a program on PATH or in the sbin directories, which are
// not on every PATH (vsftpd, useradd and chpasswd live in /usr/sbin).
func SbinPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/sbin, /sbin", name)
}

var ftpUserSetup struct {
	once     sync.Once
	uid, gid int
	err      error
}

// FTPUserIDs creates the local user FTPUser once per process if it is
// missing, sets its password, and returns its uid and gid.
func FTPUserIDs() (uid, gid int, err error) {
	ftpUserSetup.once.Do(func() {
		ftpUserSetup.uid, ftpUserSetup.gid, ftpUserSetup.err = setupFTPUser()
	})
	return ftpUserSetup.uid, ftpUserSetup.gid, ftpUserSetup.err
}

func setupFTPUser() (int, int, error) {
	shell, err := listedShell()
	if err != nil {
		return 0, 0, err
	}
	u, uid, gid, err := ensureUser(FTPUser, "-M", "-s", shell, "-c", "relay e2e FTP test user")
	if err != nil {
		return 0, 0, err
	}
	chpasswd, err := SbinPath("chpasswd")
	if err != nil {
		return 0, 0, err
	}
	if out, err := retryShadow(func() *exec.Cmd {
		c := exec.Command(chpasswd)
		c.Stdin = strings.NewReader(FTPUser + ":" + FTPPassword + "\n")
		return c
	}); err != nil {
		return 0, 0, fmt.Errorf("chpasswd %s: %v: %s", FTPUser, err, out)
	}
	// vsftpd enters the home directory before local_root and refuses the
	// login ("500 OOPS: cannot change directory") when it is missing, which
	// it is after useradd -M: make it, empty.
	if u.HomeDir == "" || u.HomeDir == "/" {
		return uid, gid, nil
	}
	if _, err := os.Stat(u.HomeDir); os.IsNotExist(err) {
		if err := os.MkdirAll(u.HomeDir, 0o755); err != nil {
			return 0, 0, err
		}
		if err := os.Chown(u.HomeDir, uid, gid); err != nil {
			return 0, 0, err
		}
	}
	return uid, gid, nil
}

// ensureUser creates the local user name with useradd args unless it
// exists, and returns it with its uid and gid.
func ensureUser(name string, args ...string) (*user.User, int, int, error) {
	if _, err := user.Lookup(name); err != nil {
		useradd, err := SbinPath("useradd")
		if err != nil {
			return nil, 0, 0, err
		}
		out, err := retryShadow(func() *exec.Cmd {
			return exec.Command(useradd, append(args, name)...)
		})
		if err != nil {
			// Another process may have created it meanwhile.
			if _, lerr := user.Lookup(name); lerr != nil {
				return nil, 0, 0, fmt.Errorf("useradd %s: %v: %s", name, err, out)
			}
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, 0, 0, err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, 0, 0, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, 0, 0, err
	}
	return u, uid, gid, nil
}

// retryShadow runs a command that locks /etc/passwd or /etc/shadow a few
// times, since another process may hold the lock.
func retryShadow(mk func() *exec.Cmd) ([]byte, error) {
	var out []byte
	var err error
	for i := 0; i < 10; i++ {
		if out, err = mk().CombinedOutput(); err == nil {
			return out, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return out, err
}

// listedShell picks a shell listed in /etc/shells (PAM's pam_shells refuses
// any other), preferring ones that give no interactive login.
func listedShell() (string, error) {
	b, err := os.ReadFile("/etc/shells")
	if err != nil {
		return "", err
	}
	listed := map[string]bool{}
	var first string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if _, err := os.Stat(l); err != nil {
			continue
		}
		listed[l] = true
		if first == "" {
			first = l
		}
	}
	for _, s := range []string{"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sh", "/usr/bin/sh", "/bin/bash"} {
		if listed[s] {
			return s, nil
		}
	}
	if first == "" {
		return "", errors.New("/etc/shells lists no existing shell")
	}
	return first, nil
}

// StartVsftpd starts a vsftpd on 127.0.0.1 with its own config, root and
// ports and waits until its port accepts. The error wraps ErrNotInstalled or
// ErrNotRoot when no server can run here. The caller must Close it.
func StartVsftpd(o VsftpdOptions) (*Vsftpd, error) {
	mode := o.TLS
	if mode == "" {
		mode = TLSNone
	}
	if mode != TLSNone && mode != TLSExplicit && mode != TLSImplicit {
		return nil, fmt.Errorf("StartVsftpd: TLS %q: want none, explicit or implicit", o.TLS)
	}
	bin, err := SbinPath("vsftpd")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotInstalled, err)
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	uid, gid, err := FTPUserIDs()
	if err != nil {
		return nil, fmt.Errorf("vsftpd user %s: %w", FTPUser, err)
	}

	dir, err := os.MkdirTemp(o.Dir, "relay-vsftpd-")
	if err != nil {
		return nil, err
	}
	s := &Vsftpd{
		Host: "127.0.0.1", User: FTPUser, Password: FTPPassword,
		Root: filepath.Join(dir, "root"), TLS: mode, UID: uid, GID: gid,
		bin: bin, dir: dir, conf: filepath.Join(dir, "vsftpd.conf"),
	}
	if err := s.prepare(mode); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	certFile, keyFile := s.CAFile, ""
	if certFile != "" {
		keyFile = filepath.Join(dir, "key.pem")
	}

	// Another process may take a port between the check and vsftpd's bind:
	// try fresh ports a few times.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := reservePorts(1 + PasvPorts)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		base := ports.Base
		s.Port, s.ports = base, ports
		if err := os.WriteFile(s.conf, []byte(s.config(base+1, base+PasvPorts, certFile, keyFile)), 0o600); err != nil {
			ports.release()
			os.RemoveAll(dir)
			return nil, err
		}
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
		ports.release()
		if o.Logf != nil {
			o.Logf("vsftpd attempt %d on port %d: %v", attempt+1, base, lastErr)
		}
	}
	err = fmt.Errorf("vsftpd did not start: %v\n%s", lastErr, s.LogTail())
	os.RemoveAll(dir)
	return nil, err
}

// prepare makes the folders and, with TLS, the certificate.
func (s *Vsftpd) prepare(mode string) error {
	// The login enters local_root as the user: the path must be traversable.
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{s.Root, filepath.Join(s.dir, "empty")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.Chown(s.Root, s.UID, s.GID); err != nil {
		return err
	}
	if mode != TLSNone {
		certFile, keyFile := filepath.Join(s.dir, "cert.pem"), filepath.Join(s.dir, "key.pem")
		if err := writeSelfSignedCert(certFile, keyFile); err != nil {
			return err
		}
		s.CAFile = certFile
	}
	return nil
}

// config renders vsftpd.conf.
func (s *Vsftpd) config(pasvMin, pasvMax int, certFile, keyFile string) string {
	var b strings.Builder
	kv := func(k string, v any) { fmt.Fprintf(&b, "%s=%v\n", k, v) }
	kv("listen", "YES")
	kv("listen_ipv6", "NO")
	kv("listen_address", s.Host)
	kv("listen_port", s.Port)
	kv("background", "NO")
	kv("ftpd_banner", "relay e2e vsftpd")
	kv("anonymous_enable", "NO")
	kv("local_enable", "YES")
	kv("write_enable", "YES")
	kv("local_umask", "022")
	kv("file_open_mode", "0666")
	kv("local_root", s.Root)
	kv("chroot_local_user", "YES")
	kv("allow_writeable_chroot", "YES")
	kv("pam_service_name", "vsftpd")
	kv("secure_chroot_dir", filepath.Join(s.dir, "empty"))
	kv("connect_from_port_20", "NO")
	kv("pasv_enable", "YES")
	kv("pasv_address", s.Host)
	kv("pasv_min_port", pasvMin)
	kv("pasv_max_port", pasvMax)
	kv("utf8_filesystem", "YES")
	kv("use_localtime", "NO")
	kv("seccomp_sandbox", "NO")
	kv("isolate", "NO")
	kv("isolate_network", "NO")
	kv("syslog_enable", "NO")
	kv("xferlog_enable", "YES")
	kv("dual_log_enable", "YES")
	kv("xferlog_file", filepath.Join(s.dir, "xferlog"))
	kv("vsftpd_log_file", filepath.Join(s.dir, "vsftpd.log"))
	kv("log_ftp_protocol", "YES")
	if s.TLS != TLSNone {
		kv("ssl_enable", "YES")
		kv("rsa_cert_file", certFile)
		kv("rsa_private_key_file", keyFile)
		kv("force_local_logins_ssl", "YES")
		kv("force_local_data_ssl", "YES")
		// require_ssl_reuse stays at its default, YES.
		if s.TLS == TLSImplicit {
			kv("implicit_ssl", "YES")
		}
	}
	return b.String()
}

// launch starts vsftpd and waits until its port accepts. On failure the
// process is stopped again.
func (s *Vsftpd) launch() error {
	out, err := os.OpenFile(filepath.Join(s.dir, "vsftpd.out"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.conf)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = out, out
	// If the calling process dies without stopping the server (a test
	// -timeout panic, a kill), the listener gets SIGTERM. Pdeathsig follows
	// the thread that forked, not the process: that goroutine stays locked
	// to its thread and blocked in Wait for the server's whole life.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	done, err := StartDaemon(cmd, out)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	addr := s.Addr()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			s.Stop()
			return fmt.Errorf("vsftpd exited at start: %v", cmd.ProcessState)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("vsftpd did not open %s within 10s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the listener's process id, 0 while stopped.
func (s *Vsftpd) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop stops this vsftpd and every connection it serves: SIGTERM by PID to
// the listener and to each session it forked, SIGKILL to whatever is left
// after 5s, and waits. It may be called any number of times; the error says
// what survived SIGKILL.
//
// vsftpd serves each connection in processes forked from the listener that
// call setsid (own session and process group, pgid = pid of the listener's
// child) and outlive the listener: signalling the listener alone leaves
// logged-in clients connected. So the listener is held with SIGSTOP (it
// cannot fork more), its children are read from /proc, and each child's
// process group is signalled.
func (s *Vsftpd) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	pid, done := s.cmd.Process.Pid, s.done
	exited := func() bool { return closed(done) }
	var groups []int
	if !exited() {
		syscall.Kill(pid, syscall.SIGSTOP)
		for _, p := range ProcTable() {
			if p.PPID == pid {
				groups = append(groups, p.PID)
			}
		}
	}
	signal := func(sig syscall.Signal) {
		for _, g := range groups {
			syscall.Kill(-g, sig) // ESRCH until the child has called setsid
			syscall.Kill(g, sig)
		}
		if !exited() {
			syscall.Kill(pid, sig)
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	// gone: the listener is reaped and no session process is left but
	// zombies (orphans are reparented to PID 1, which need not reap them).
	gone := func() bool {
		if !exited() {
			return false
		}
		if len(groups) == 0 {
			return true
		}
		for _, p := range ProcTable() {
			if p.State != 'Z' && p.State != 'X' && (slices.Contains(groups, p.PID) || slices.Contains(groups, p.PGID)) {
				return false
			}
		}
		return true
	}
	wait := func(d time.Duration) bool { return waitUntil(d, 20*time.Millisecond, gone) }
	var err error
	signal(syscall.SIGTERM)
	if !wait(5 * time.Second) {
		signal(syscall.SIGKILL)
		if !wait(5 * time.Second) {
			err = fmt.Errorf("vsftpd %d or its sessions %v did not exit after SIGKILL", pid, groups)
		}
	}
	s.cmd, s.done = nil, nil
	return err
}

// Close stops the server and removes its temp folder (config, logs, Root).
func (s *Vsftpd) Close() error {
	err := s.Stop()
	s.ports.release()
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// ProcInfo is one line of /proc/<pid>/stat.
type ProcInfo struct {
	PID, PPID, PGID int
	State           byte
}

// ProcTable lists the processes in /proc.
func ProcTable() []ProcInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var ps []ProcInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || len(f[0]) != 1 {
			continue
		}
		ppid, err1 := strconv.Atoi(f[1])
		pgid, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		ps = append(ps, ProcInfo{PID: pid, PPID: ppid, PGID: pgid, State: f[0][0]})
	}
	return ps
}

// Start starts the server again on the same port with the same config, after
// Stop. It does nothing while the server runs.
func (s *Vsftpd) Start() error {
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if running {
		return nil
	}
	var err error
	// The port was ours a moment ago; give a lingering socket a few tries.
	for attempt := 0; attempt < 3; attempt++ {
		if err = s.launch(); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// Addr is "127.0.0.1:<port>".
func (s *Vsftpd) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// URL is "ftp://<user>@127.0.0.1:<port>/<path>" (no password: the relay
// takes it from password_env). Non-ASCII path bytes are percent-encoded.
func (s *Vsftpd) URL(path string) string {
	u := url.URL{Scheme: "ftp", User: url.User(s.User), Host: s.Addr(), Path: "/" + strings.TrimPrefix(path, "/")}
	return u.String()
}

// TLSConfig is a client config that trusts CAFile, for TLS servers; nil for
// plain ones. It has the session cache and ServerName that vsftpd's
// require_ssl_reuse needs.
func (s *Vsftpd) TLSConfig() (*tls.Config, error) {
	if s.TLS == TLSNone {
		return nil, nil
	}
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", s.CAFile)
	}
	return &tls.Config{
		RootCAs:            pool,
		ServerName:         s.Host,
		ClientSessionCache: tls.NewLRUClientSessionCache(16),
		MinVersion:         tls.VersionTLS12,
	}, nil
}

// Dial connects with jlaffaye/ftp in the server's TLS mode and logs in. The
// caller quits the connection.
func (s *Vsftpd) Dial() (*ftp.ServerConn, error) {
	c, err := s.DialNoLogin()
	if err != nil {
		return nil, err
	}
	if err := c.Login(s.User, s.Password); err != nil {
		c.Quit()
		return nil, fmt.Errorf("ftp login %s (%s): %w", s.Addr(), s.TLS, err)
	}
	return c, nil
}

// DialNoLogin connects with jlaffaye/ftp in the server's TLS mode.
func (s *Vsftpd) DialNoLogin() (*ftp.ServerConn, error) {
	opts := []ftp.DialOption{ftp.DialWithTimeout(10 * time.Second)}
	if s.TLS != TLSNone {
		tc, err := s.TLSConfig()
		if err != nil {
			return nil, err
		}
		if s.TLS == TLSExplicit {
			opts = append(opts, ftp.DialWithExplicitTLS(tc))
		} else {
			opts = append(opts, ftp.DialWithTLS(tc))
		}
	}
	c, err := ftp.Dial(s.Addr(), opts...)
	if err != nil {
		return nil, fmt.Errorf("ftp dial %s (%s): %w", s.Addr(), s.TLS, err)
	}
	return c, nil
}

// Path is the local path of rel under Root.
func (s *Vsftpd) Path(rel string) string {
	return filepath.Join(s.Root, filepath.FromSlash(rel))
}

// MkdirAll makes the folder rel under Root and its missing parents, owned
// by the FTP user.
func (s *Vsftpd) MkdirAll(rel string) error {
	p := s.Path(rel)
	var mk []string
	for d := p; d != s.Root && len(d) > len(s.Root); d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		mk = append(mk, d)
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		return err
	}
	for _, d := range mk {
		if err := os.Chown(d, s.UID, s.GID); err != nil {
			return err
		}
	}
	return nil
}

// WriteFile puts a file under Root as the FTP user would own it (parent
// directories too), so the server can rename and delete it.
func (s *Vsftpd) WriteFile(rel string, data []byte) error {
	if err := s.MkdirAll(filepath.Dir(filepath.FromSlash(rel))); err != nil {
		return err
	}
	p := s.Path(rel)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return err
	}
	return os.Chown(p, s.UID, s.GID)
}

// LogTail is the end of vsftpd's own output and of its log file.
func (s *Vsftpd) LogTail() string {
	var b strings.Builder
	for _, name := range []string{"vsftpd.out", "vsftpd.log"} {
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", name, strings.Join(lines, "\n"))
	}
	return b.String()
}

// writeSelfSignedCert writes a self-signed RSA certificate for 127.0.0.1
// and localhost and its key as PEM files.
func writeSelfSignedCert(certFile, keyFile string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "127.0.0.1", Organization: []string{"relay e2e"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
}
