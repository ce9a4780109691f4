package realserver

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DebianNATSServer is the path of the Debian package's nats-server.
func DebianNATSServer() (string, error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if bin, err = SbinPath("nats-server"); err != nil {
			return "", errors.New("nats-server not found: install the Debian package nats-server")
		}
	}
	return bin, nil
}

// NATSCluster is a JetStream cluster of nats-server processes on
// 127.0.0.1, each with a client, cluster, leaf node and monitoring port,
// all in one JetStream domain: the head office of a relay deployment.
type NATSCluster struct {
	// Domain is the cluster's JetStream domain (the head office relay's id).
	Domain string

	// CertFile is the leaf node port's self-signed certificate (for
	// 127.0.0.1), "" without TLS: an office's nats.leaf.tls.ca_file.
	CertFile string

	bin     string
	dir     string
	servers []*natsServer
	// ports holds every server's ports until Close, also while an outage
	// stops the servers.
	ports *portBlock
}

type natsServer struct {
	name                           string
	conf, out                      string
	client, route, leaf, monitorPt int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done <-chan struct{}
}

// StartNATSCluster writes the configs of n servers under dir and starts
// them from the nats-server binary bin ("": Debian's); it returns once every
// server is healthy. With leafTLS the leaf node ports require TLS (a
// self-signed certificate, CertFile). On failure every started server is
// stopped.
func StartNATSCluster(bin, dir string, n int, domain string, leafTLS bool) (_ *NATSCluster, err error) {
	if bin == "" {
		if bin, err = DebianNATSServer(); err != nil {
			return nil, err
		}
	}
	ports, err := reservePorts(4 * n)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			ports.release()
		}
	}()
	base := ports.Base
	c := &NATSCluster{Domain: domain, bin: bin, dir: dir, ports: ports}
	for i := range n {
		p := base + 4*i
		c.servers = append(c.servers, &natsServer{
			name: fmt.Sprintf("n%d", i+1), client: p, route: p + 1, leaf: p + 2, monitorPt: p + 3,
		})
	}
	leafTLSConf := ""
	if leafTLS {
		c.CertFile = filepath.Join(dir, "leaf-cert.pem")
		key := filepath.Join(dir, "leaf-key.pem")
		if err := writeSelfSignedCert(c.CertFile, key); err != nil {
			return nil, err
		}
		leafTLSConf = fmt.Sprintf("\n  tls { cert_file: %q, key_file: %q }", c.CertFile, key)
	}
	var routes []string
	for _, s := range c.servers {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", s.route))
	}
	for _, s := range c.servers {
		store := filepath.Join(dir, s.name)
		if err := os.MkdirAll(store, 0o750); err != nil {
			return nil, err
		}
		s.conf = filepath.Join(dir, s.name+".conf")
		s.out = filepath.Join(dir, s.name+".log")
		conf := fmt.Sprintf(`server_name: %s
host: 127.0.0.1
port: %d
http: "127.0.0.1:%d"
jetstream {
  store_dir: %q
  domain: %s
  max_memory_store: 64MB
  max_file_store: 2GB
}
cluster {
  name: %s
  host: 127.0.0.1
  port: %d
  routes: [%s]
}
leafnodes {
  host: 127.0.0.1
  port: %d%s
}
`, s.name, s.client, s.monitorPt, store, domain, domain, s.route, strings.Join(routes, ", "), s.leaf, leafTLSConf)
		if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
			return nil, err
		}
	}
	for i := range c.servers {
		if err := c.Start(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitReady(60 * time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ClientURL lists every server's client URL, comma-separated (nats.url).
func (c *NATSCluster) ClientURL() string {
	var urls []string
	for _, s := range c.servers {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", s.client))
	}
	return strings.Join(urls, ",")
}

// LeafURL is server i's leaf node URL (nats.leaf.url of an office).
func (c *NATSCluster) LeafURL(i int) string {
	scheme := "nats-leaf"
	if c.CertFile != "" {
		scheme = "tls"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, c.servers[i].leaf)
}

// Start starts server i (again) and waits until its client port accepts.
func (c *NATSCluster) Start(i int) error {
	s := c.servers[i]
	out, err := os.OpenFile(s.out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, "-c", s.conf)
	cmd.Stdout, cmd.Stderr = out, out
	// SIGTERM if the test process dies without stopping it (see startDaemon).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	done, err := StartDaemon(cmd, out)
	if err != nil {
		return fmt.Errorf("nats-server %s: %w", s.name, err)
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.client))
	ok := waitUntil(15*time.Second, 20*time.Millisecond, func() bool {
		if closed(done) {
			return true
		}
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	if closed(done) || !ok {
		c.Stop(i)
		return fmt.Errorf("nats-server %s did not open %s:\n%s", s.name, addr, c.LogTail(i))
	}
	return nil
}

// WaitReady waits until every running server says it is healthy on its
// monitoring port (/healthz: JetStream up and current with the cluster).
func (c *NATSCluster) WaitReady(d time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	for i, s := range c.servers {
		if c.PID(i) == 0 {
			continue
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/healthz", s.monitorPt)
		ok := waitUntil(d, 100*time.Millisecond, func() bool {
			resp, err := client.Get(url)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		if !ok {
			return fmt.Errorf("nats-server %s not healthy within %s:\n%s", s.name, d, c.LogTail(i))
		}
	}
	return nil
}

// PID is server i's process id, 0 while stopped.
func (c *NATSCluster) PID(i int) int {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop stops server i by its PID: SIGTERM, SIGKILL after 5s, and waits.
func (c *NATSCluster) Stop(i int) error {
	s := c.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	pid, done := s.cmd.Process.Pid, s.done
	s.cmd, s.done = nil, nil
	if closed(done) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if waitUntil(5*time.Second, 20*time.Millisecond, func() bool { return closed(done) }) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if !waitUntil(5*time.Second, 20*time.Millisecond, func() bool { return closed(done) }) {
		return fmt.Errorf("nats-server %s (%d) did not exit after SIGKILL", s.name, pid)
	}
	return nil
}

// Close stops every server.
func (c *NATSCluster) Close() error {
	var errs []error
	for i := range c.servers {
		errs = append(errs, c.Stop(i))
	}
	c.ports.release()
	return errors.Join(errs...)
}

// LogTail is the end of server i's log.
func (c *NATSCluster) LogTail(i int) string {
	b, _ := os.ReadFile(c.servers[i].out)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}
