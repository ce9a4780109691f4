package realserver

// A real nginx (Debian's /usr/sbin/nginx) on 127.0.0.1 as a WebDAV target
// for the http endpoint: PUT under /dav/ stores files on disk, /auth/ does
// the same behind basic auth, /fail/ answers 503 (an outage), /gone/ 404,
// and /1c-error/ 200 with 1C's remote-query error reply (OneCErrorReply).
//
// Facts about Debian 12's nginx 1.22.1 (package nginx; nginx-light is only
// a metapackage adding the echo module) that this code relies on, checked
// here:
//   - ngx_http_dav_module is compiled into the binary (nginx -V shows
//     --with-http_dav_module): `dav_methods PUT DELETE MKCOL COPY MOVE`
//     works without libnginx-mod-http-dav-ext, which only adds PROPFIND and
//     OPTIONS. Without dav-ext an OPTIONS request answers 405, and HEAD or
//     GET of a folder 403 (no index, autoindex off).
//   - It runs in the foreground from its own config with `daemon off;`:
//     `nginx -p <dir> -c <dir>/nginx.conf -e <dir>/error.log`; -e (1.19.5+)
//     keeps it from touching the compiled-in log path before the config is
//     read. The master forks worker processes (its children, same process
//     group); SIGTERM to the master stops the workers and the master within
//     milliseconds. A master killed with SIGKILL leaves its workers serving,
//     so Stop signals the whole process group (Setpgid) and checks that no
//     worker is left.
//   - Started as root without a `user` directive, the workers run as
//     `nobody` and cannot write into a root-owned 0700 temp folder: a PUT
//     then fails with 500 and "mkdir() ... failed" in the error log. So the
//     config says `user root root;` when relay's tests run as root (the
//     directive is ignored, with a warning, for other users, whose workers
//     run as themselves).
//   - A PUT body is written to client_body_temp_path first and renamed
//     into place once complete (checked with a 1 MB/s upload: the target
//     name does not exist until the end), so a reader never sees a partial
//     file as long as the temp path is on the same filesystem as the root.
//     A new file answers 201 Created, an overwritten one 204 No Content.
//   - `create_full_put_path on` makes missing folders; without it a PUT into
//     a missing folder answers 500 (rename() ENOENT, logged as crit), not 409.
//   - The request path is percent-decoded: PUT /dav/in/Message_%D0%A6%D0%9E_B.xml
//     stores the UTF-8 name Message_ЦО_B.xml on disk. `dav_access user:rw
//     group:rw all:r` gives files mode 0664.
//   - POST is no WebDAV method: the static module answers it, 404 for a
//     missing file. `client_max_body_size 0` lifts the default 1 MiB limit;
//     the limit is checked against Content-Length when the location is
//     chosen, before `return` runs, so even `location /fail/ { return 503; }`
//     answers 413 to a large body unless the limit is lifted server-wide.
//   - auth_basic_user_file accepts `user:{PLAIN}password` lines, so no
//     crypt() hash has to be made; a wrong or missing password answers 401.
//   - The port is chosen below the ephemeral range, as for vsftpd (see
//     vsftpd.go): a client retrying while nginx is down must not take it.

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Basic-auth credentials of an nginx's /auth/ location.
const (
	NginxUser     = "relay"
	NginxPassword = "relay-e2e-http-Pw1"
)

// OneCErrorReply is what /1c-error/ answers with 200, as a 1C HTTP service
// that refuses a message does.
const OneCErrorReply = `{"error": true, "errorDescription": "Обмен с узлом заблокирован"}`

// ErrNginxNotInstalled is returned by StartNginx when /usr/sbin/nginx is
// missing; tests skip on it unless servers are required.
var ErrNginxNotInstalled = errors.New("nginx not installed")

// NginxOptions configures StartNginx.
type NginxOptions struct {
	// Dir is the parent of the server's temp folder ("" = os.TempDir()).
	Dir string
	// Logf, if set, receives notes such as a start attempt that failed and
	// was retried on another port.
	Logf func(format string, args ...any)
}

// Nginx is one nginx started on 127.0.0.1.
type Nginx struct {
	Host string // "127.0.0.1"
	Port int

	bin  string
	dir  string // temp dir: nginx.conf, logs, body/, root/
	root string
	conf string
	// ports holds Port until Close.
	ports *portBlock

	mu   sync.Mutex
	cmd  *exec.Cmd
	done <-chan struct{} // closed when cmd has been waited for
}

// StartNginx starts an nginx on 127.0.0.1 with its own config, root and
// port and waits until the port accepts. The caller must Close it.
func StartNginx(o NginxOptions) (*Nginx, error) {
	bin, err := SbinPath("nginx")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNginxNotInstalled, err)
	}
	dir, err := os.MkdirTemp(o.Dir, "relay-nginx-")
	if err != nil {
		return nil, err
	}
	n := &Nginx{Host: "127.0.0.1", bin: bin, dir: dir, root: filepath.Join(dir, "root"), conf: filepath.Join(dir, "nginx.conf")}
	for _, d := range []string{n.root, filepath.Join(n.root, "dav"), filepath.Join(n.root, "auth")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(NginxUser+":{PLAIN}"+NginxPassword+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := reservePorts(1)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		port := ports.Base
		n.Port, n.ports = port, ports
		if err := os.WriteFile(n.conf, []byte(n.config()), 0o644); err != nil {
			ports.release()
			os.RemoveAll(dir)
			return nil, err
		}
		if lastErr = n.launch(); lastErr == nil {
			return n, nil
		}
		ports.release()
		if o.Logf != nil {
			o.Logf("nginx attempt %d on port %d: %v", attempt+1, port, lastErr)
		}
	}
	err = fmt.Errorf("nginx did not start: %v\n%s", lastErr, n.LogTail())
	os.RemoveAll(dir)
	return nil, err
}

// config renders nginx.conf.
func (n *Nginx) config() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	if os.Geteuid() == 0 {
		p("user root root;")
	}
	p("daemon off;")
	p("master_process on;")
	p("worker_processes 1;")
	p("pid %s;", filepath.Join(n.dir, "nginx.pid"))
	p("error_log %s info;", filepath.Join(n.dir, "error.log"))
	p("events { worker_connections 256; }")
	p("http {")
	p("  access_log %s;", filepath.Join(n.dir, "access.log"))
	for _, t := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		p("  %s_temp_path %s;", t, filepath.Join(n.dir, strings.TrimSuffix(t, "_body")+"_temp"))
	}
	p("  default_type application/octet-stream;")
	p("  server {")
	p("    listen %s:%d;", n.Host, n.Port)
	p("    client_max_body_size 0;")
	dav := fmt.Sprintf("root %s; dav_methods PUT DELETE MKCOL COPY MOVE; create_full_put_path on; dav_access user:rw group:rw all:r;", n.root)
	p("    location /dav/ { %s }", dav)
	p("    location /auth/ { %s auth_basic \"relay e2e\"; auth_basic_user_file %s; }", dav, filepath.Join(n.dir, "htpasswd"))
	p("    location /fail/ { return 503; }")
	p("    location /gone/ { return 404; }")
	p("    location /1c-error/ { default_type application/json; return 200 '%s'; }", OneCErrorReply)
	p("  }")
	p("}")
	return b.String()
}

// launch starts nginx and waits until its port accepts. On failure the
// process is stopped again.
func (n *Nginx) launch() error {
	out, err := os.OpenFile(filepath.Join(n.dir, "nginx.out"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bin, "-p", n.dir, "-c", n.conf, "-e", filepath.Join(n.dir, "error.log"))
	cmd.Dir = n.dir
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group (the workers join it), so Stop reaches every
	// process; SIGTERM to the master if the calling process dies. Pdeathsig
	// follows the thread that forked: that goroutine stays locked to its
	// thread and blocked in Wait for the server's whole life.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	done, err := StartDaemon(cmd, out)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()

	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			n.Stop()
			return fmt.Errorf("nginx exited at start: %v", cmd.ProcessState)
		default:
		}
		if c, err := net.DialTimeout("tcp", n.Addr(), 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			n.Stop()
			return fmt.Errorf("nginx did not open %s within 10s", n.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the master's process id, 0 while stopped.
func (n *Nginx) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Stop stops the master and its workers: SIGTERM to the master, SIGKILL to
// the process group after 5s, and waits until no process of the group is
// left but zombies. It may be called any number of times; the error says
// what survived SIGKILL.
func (n *Nginx) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil
	}
	pid, done := n.cmd.Process.Pid, n.done
	exited := func() bool { return closed(done) }
	gone := func() bool {
		if !exited() {
			return false
		}
		for _, p := range ProcTable() {
			if p.PGID == pid && p.State != 'Z' && p.State != 'X' {
				return false
			}
		}
		return true
	}
	wait := func(d time.Duration) bool { return waitUntil(d, 10*time.Millisecond, gone) }
	var err error
	syscall.Kill(pid, syscall.SIGTERM)
	if !wait(5 * time.Second) {
		syscall.Kill(-pid, syscall.SIGKILL)
		if !wait(5 * time.Second) {
			err = fmt.Errorf("nginx %d or its workers did not exit after SIGKILL", pid)
		}
	}
	n.cmd, n.done = nil, nil
	return err
}

// Start starts the server again on the same port with the same config,
// after Stop. It does nothing while the server runs.
func (n *Nginx) Start() error {
	n.mu.Lock()
	running := n.cmd != nil
	n.mu.Unlock()
	if running {
		return nil
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = n.launch(); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// Close stops the server and removes its temp folder (config, logs, root).
func (n *Nginx) Close() error {
	err := n.Stop()
	n.ports.release()
	if rerr := os.RemoveAll(n.dir); err == nil {
		err = rerr
	}
	return err
}

// Addr is "127.0.0.1:<port>".
func (n *Nginx) Addr() string { return net.JoinHostPort(n.Host, strconv.Itoa(n.Port)) }

// URL is "http://127.0.0.1:<port>/<path>", non-ASCII path bytes
// percent-encoded; a trailing slash is kept.
func (n *Nginx) URL(path string) string {
	u := url.URL{Scheme: "http", Host: n.Addr(), Path: "/" + strings.TrimPrefix(path, "/")}
	return u.String()
}

// Root is the local path of the URL path rel ("dav/in/Message_A_B.xml"):
// where a PUT stores the file.
func (n *Nginx) Root(rel string) string {
	return filepath.Join(n.root, filepath.FromSlash(strings.TrimPrefix(rel, "/")))
}

// LogTail is the end of nginx's own output and of its error and access logs.
func (n *Nginx) LogTail() string {
	var b strings.Builder
	for _, name := range []string{"nginx.out", "error.log", "access.log"} {
		data, err := os.ReadFile(filepath.Join(n.dir, name))
		if err != nil {
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
