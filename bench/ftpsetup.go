package main

// Shared by the ftp and ftpbig scenarios: one vsftpd on 127.0.0.1 (from
// test/realserver), its folders and the relay's routing on them, the curl
// client of the baselines.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/relay1c/relay/test/realserver"
)

// ftpPasswordEnv is the variable the relay child reads the FTP password from
// (password_env); the bench sets it in its own environment, which the child
// inherits.
const ftpPasswordEnv = "RELAY_BENCH_FTP_PASSWORD"

// Folders on the server, relative to the FTP root: node A's pickup and node
// B's delivery (every destination node of the ftp scenario delivers into
// the same b/in), and a staging folder outside both.
const (
	ftpOutDir   = "a/out"
	ftpInDir    = "b/in"
	ftpStageDir = "stage"
)

// ftpServer starts a plain-FTP vsftpd for a scenario, with a/out, b/in and
// stage/ made, and registers it for the last-resort cleanup. close stops it
// by PID (the listener and every session) and removes its folder.
func ftpServer(parent string, logf func(string, ...any)) (v *realserver.Vsftpd, closeFn func() error, err error) {
	// vsftpd enters the root as the FTP user: the bench's 0700 temp folder
	// must be traversable.
	if err := os.Chmod(parent, 0o755); err != nil {
		return nil, nil, err
	}
	for d := filepath.Dir(parent); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return nil, nil, fmt.Errorf("vsftpd's user %s cannot traverse %s (mode %v): put -dir under a folder others may enter", realserver.FTPUser, d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	v, err = realserver.StartVsftpd(realserver.VsftpdOptions{Dir: parent, Logf: logf})
	if err != nil {
		if errors.Is(err, realserver.ErrNotInstalled) {
			err = fmt.Errorf("%w: apt-get install -y vsftpd", err)
		}
		return nil, nil, err
	}
	unregister := registerStop(func() { _ = v.Close() })
	closeFn = func() error {
		defer unregister()
		return v.Close()
	}
	for _, d := range []string{ftpOutDir, ftpInDir, ftpStageDir} {
		if err := v.MkdirAll(d); err != nil {
			closeFn()
			return nil, nil, err
		}
	}
	logf("vsftpd %d on %s, root %s", v.PID(), v.Addr(), v.Root)
	return v, closeFn, nil
}

// ftpBench is what both ftp scenarios run on: curl, a temp folder, the
// relay binary and one vsftpd serving the folder.
type ftpBench struct {
	curl, root, bin string
	v               *realserver.Vsftpd
	closeServer     func() error
}

// startFTPBench finds curl, makes a temp folder (pattern) under dir, finds
// the relay binary (relayBin, or built into the folder), starts vsftpd on
// the folder and sets ftpPasswordEnv for the relay children. The caller
// undoes it with close; when startFTPBench fails it has undone it already.
func startFTPBench(ctx context.Context, dir, pattern, relayBin string, logf func(string, ...any)) (b *ftpBench, err error) {
	b = &ftpBench{}
	if b.curl, err = curlPath(); err != nil {
		return nil, err
	}
	if b.root, err = tempDir(dir, pattern); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			removeTemp(b.root)
		}
	}()
	if b.bin, err = relayBinary(ctx, relayBin, b.root, logf); err != nil {
		return nil, err
	}
	if b.v, b.closeServer, err = ftpServer(b.root, logf); err != nil {
		return nil, err
	}
	if err = os.Setenv(ftpPasswordEnv, b.v.Password); err != nil {
		b.closeServer()
		return nil, err
	}
	return b, nil
}

// close stops vsftpd by its PIDs and removes the temp folder; a failure to
// stop becomes *err if there was none.
func (b *ftpBench) close(err *error) {
	if cerr := b.closeServer(); cerr != nil && *err == nil {
		*err = cerr
	}
	removeTemp(b.root)
}

// ftpSite is the layout of the ftp scenarios: every channel is written
// into a/out and delivered into b/in of the server.
func ftpSite(v *realserver.Vsftpd) site {
	return site{
		root: v.Root,
		out:  func(*channel) string { return filepath.FromSlash(ftpOutDir) },
		in:   func(*channel) string { return filepath.FromSlash(ftpInDir) },
	}
}

// ftpWrite is the ftp producers' write: under a hidden temp name owned by
// the FTP user, then renamed to path, so that the curl baseline, which has
// no settle, never reads half a file.
func ftpWrite(v *realserver.Vsftpd) func(path string, data []byte) error {
	return func(path string, data []byte) error {
		tmp := filepath.Join(filepath.Dir(path), ".bench-"+filepath.Base(path))
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if err := os.Chown(tmp, v.UID, v.GID); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
}

// ftpRoutingYAML is the relay's config on the server: node from picks up
// from a/out, every node of to delivers into b/in, in mode ("" = the
// default).
func ftpRoutingYAML(id, listen string, v *realserver.Vsftpd, from string, to []string, mode string, settle, poll time.Duration) string {
	var b strings.Builder
	b.WriteString(relayYAML(id, listen))
	fmt.Fprintf(&b, "  %q:\n    pickup: { ftp: { url: %q, password_env: %s, settle: %s, poll_interval: %s, incomplete_timeout: 10m } }\n",
		from, v.URL(ftpOutDir), ftpPasswordEnv, settle, poll)
	for _, n := range to {
		fmt.Fprintf(&b, "  %q:\n%s    deliver: { ftp: { url: %q, password_env: %s } }\n", n, modeYAML(mode), v.URL(ftpInDir), ftpPasswordEnv)
	}
	return b.String()
}

// ftpAvailable says why the ftp scenarios cannot run here, or nil.
func ftpAvailable() error {
	if _, err := realserver.SbinPath("vsftpd"); err != nil {
		return fmt.Errorf("%w: apt-get install -y vsftpd", realserver.ErrNotInstalled)
	}
	if os.Geteuid() != 0 {
		return realserver.ErrNotRoot
	}
	_, err := curlPath()
	return err
}

// ftpURLWithPassword is ftp://user:password@127.0.0.1:port/<rel> for curl.
func ftpURLWithPassword(v *realserver.Vsftpd, rel string) string {
	u := url.URL{Scheme: "ftp", User: url.UserPassword(v.User, v.Password), Host: v.Addr(), Path: "/" + strings.TrimPrefix(rel, "/")}
	return u.String()
}

// emptyFolder removes every entry of a server folder (between the sides of a run).
func emptyFolder(v *realserver.Vsftpd, rel string) error {
	dir := v.Path(rel)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// curlPath finds curl, the client of the baselines.
func curlPath() (string, error) {
	p, err := exec.LookPath("curl")
	if err != nil {
		return "", errors.New("curl not found: DEBIAN_FRONTEND=noninteractive apt-get install -y curl")
	}
	return p, nil
}

// curlConfig builds a curl -K file: one block per transfer, separated by
// `next`, so that one curl process does them all in order over one reused
// control connection (one login).
type curlConfig struct {
	b      strings.Builder
	blocks int
}

func curlQuote(s string) string { return strconv.Quote(s) }

// curlActive makes curl use active mode (PORT; the server connects to
// 127.0.0.1): with passive mode, Debian's curl 7.88.1 intermittently waits
// 1 s before it connects a data connection on a reused control connection
// (seen here on most passes of 10 files: 0.07 s in active mode, 1-4 s in
// passive), which would measure curl, not FTP.
const curlActive = "127.0.0.1"

func (c *curlConfig) transfer(lines ...string) {
	if c.blocks > 0 {
		c.b.WriteString("next\n")
	}
	c.blocks++
	// nocwd: one RETR/STOR with the full path, no CWD per transfer.
	// ftp-port: active mode (see curlActive).
	c.b.WriteString("silent\nshow-error\nftp-method = nocwd\nftp-port = " + curlActive + "\n")
	for _, l := range lines {
		c.b.WriteString(l)
		c.b.WriteByte('\n')
	}
}

// download fetches rel into local, then deletes rel on the server.
func (c *curlConfig) download(v *realserver.Vsftpd, rel, local string, del bool) {
	lines := []string{"url = " + curlQuote(ftpURLWithPassword(v, rel)), "output = " + curlQuote(local)}
	if del {
		lines = append(lines, "quote = "+curlQuote("-DELE /"+rel))
	}
	c.transfer(lines...)
}

// upload stores local as dir/.name.tmp and renames it to dir/name.
func (c *curlConfig) upload(v *realserver.Vsftpd, local, dir, name string) {
	tmp := dir + "/." + name + ".tmp"
	c.transfer(
		"upload-file = "+curlQuote(local),
		"url = "+curlQuote(ftpURLWithPassword(v, tmp)),
		"quote = "+curlQuote("-RNFR /"+tmp),
		"quote = "+curlQuote("-RNTO /"+dir+"/"+name),
	)
}

// runCurl runs one curl process on the config, killed if ctx ends.
func runCurl(ctx context.Context, curl, confPath string, conf *curlConfig) error {
	if err := os.WriteFile(confPath, []byte(conf.b.String()), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, curl, "--noproxy", "*", "-K", confPath)
	cmd.SysProcAttr = childAttr()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("curl: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// curlList names the files of a server folder (NLST; vsftpd leaves
// dot-files out).
func curlList(ctx context.Context, curl string, v *realserver.Vsftpd, rel string) ([]string, error) {
	cmd := exec.CommandContext(ctx, curl, "--noproxy", "*", "-sS", "-P", curlActive, "--list-only", ftpURLWithPassword(v, rel)+"/")
	cmd.SysProcAttr = childAttr()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("curl --list-only: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var names []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if n := strings.TrimSpace(sc.Text()); n != "" {
			names = append(names, n)
		}
	}
	return names, sc.Err()
}
