package ftp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jlaffaye/ftp"
	ftpserver "goftp.io/server/v2"
	"goftp.io/server/v2/driver/file"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/folder/foldertest"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/exchange/exchangetest"
	"github.com/relay1c/relay/test/loopback"
)

func msgXML(t *testing.T, from, to string, no uint64, size int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := exchangetest.WriteXML(&b, hdr(from, to, no), int64(size)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fileNo(t *testing.T, p string) uint64 {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	h, err := exchange.ReadHeader(bytes.NewReader(b), exchange.DefaultLimits())
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return h.MessageNo
}

// newerDuringUpload is a server on which a newer message of the channel
// lands under the final name (put there another way: an operator, a
// restored backup, the old exchange script) while relay's upload of an
// older one is running.
type newerDuringUpload struct {
	ftpserver.Driver
	root  string
	final string
	newer []byte
}

func (d *newerDuringUpload) PutFile(ctx *ftpserver.Context, p string, r io.Reader, off int64) (int64, error) {
	if strings.Contains(p, ".relay-") {
		_ = os.WriteFile(filepath.Join(d.root, d.final), d.newer, 0o644)
	}
	return d.Driver.PutFile(ctx, p, r, off)
}

// TestDeliverNewerLandedDuringUpload: the destination is checked for a
// newer message again right before the rename; checked only before the
// upload, a newer file that arrived during it (minutes, for a big message)
// was renamed over.
func TestDeliverNewerLandedDuringUpload(t *testing.T) {
	root := t.TempDir()
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "in"), 0o755)
	newer := msgXML(t, "A", "B", 5, 3000)
	url := serve(t, &newerDuringUpload{Driver: drv, root: root, final: "in/Message_A_B.xml", newer: newer}, "in")
	p, err := NewPublisher("B", testConfig(url, "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	old := msgXML(t, "A", "B", 2, 3000)
	err = p.Publish("", deliverMsg(t, mustHeader(t, old), old))
	if no := fileNo(t, filepath.Join(root, "in", "Message_A_B.xml")); no != 5 {
		t.Fatalf("destination holds No %d after delivering No 2 (Publish: %v): the newer No 5 that landed during the upload was renamed over", no, err)
	}
	if !errors.Is(err, exchange.ErrStale) {
		t.Fatalf("Publish: %v, want ErrStale", err)
	}
}

// flakyFinalRead is a server whose RETR of the existing final file fails:
// mode "cut" sends its first bytes and then breaks (a data connection reset,
// a read error on the server), mode "refuse" refuses the RETR (file locked,
// not readable by the FTP user, a transient 4xx).
type flakyFinalRead struct {
	ftpserver.Driver
	mode string
}

type cutReader struct {
	io.ReadCloser
	left int
}

func (r *cutReader) Read(b []byte) (int, error) {
	if r.left <= 0 {
		return 0, errors.New("read error on the server")
	}
	if len(b) > r.left {
		b = b[:r.left]
	}
	n, err := r.ReadCloser.Read(b)
	r.left -= n
	return n, err
}

func (d *flakyFinalRead) GetFile(ctx *ftpserver.Context, p string, off int64) (int64, io.ReadCloser, error) {
	if strings.HasSuffix(p, "/Message_A_B.xml") {
		if d.mode == "refuse" {
			return 0, nil, errors.New("file is locked")
		}
		size, rc, err := d.Driver.GetFile(ctx, p, off)
		if err != nil {
			return size, rc, err
		}
		return size, &cutReader{ReadCloser: rc, left: 60}, nil
	}
	return d.Driver.GetFile(ctx, p, off)
}

// TestDeliverUnreadableDestinationNotReplaced: a destination file that
// cannot be read (a transfer cut short, a refused RETR of a file that is
// there) fails the delivery; it was taken for "no file / unreadable: ours
// replaces it", and the older message was renamed over the newer one
// (DESIGN §6.3).
func TestDeliverUnreadableDestinationNotReplaced(t *testing.T) {
	for _, mode := range []string{"cut", "refuse"} {
		t.Run(mode, func(t *testing.T) {
			deliverOlderOverNo5(t, func(drv ftpserver.Driver) string {
				return serve(t, &flakyFinalRead{Driver: drv, mode: mode}, "in")
			})
		})
	}
}

// deliverOlderOverNo5 delivers No 2 of A → B into in/, which holds No 5,
// through the server url serves drv (a file driver on the folder) at,
// fails the test unless No 5 is still there, and returns the delivery's
// error.
func deliverOlderOverNo5(t *testing.T, url func(drv ftpserver.Driver) string) error {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "in"), 0o755); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(root, "in", "Message_A_B.xml")
	if err := os.WriteFile(final, msgXML(t, "A", "B", 5, 3000), 0o644); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher("B", testConfig(url(drv), "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	old := msgXML(t, "A", "B", 2, 3000)
	err = p.Publish("", deliverMsg(t, mustHeader(t, old), old))
	if no := fileNo(t, final); no != 5 {
		t.Fatalf("destination holds No %d after delivering No 2 (Publish: %v): the newer No 5 was overwritten", no, err)
	}
	return err
}

// renameRefused is a server that refuses RNTO for a reason that is not an
// existing target (no rename right, a lock, the temp file gone), while DELE
// works.
type renameRefused struct{ ftpserver.Driver }

func (renameRefused) Rename(*ftpserver.Context, string, string) error {
	return errors.New("permission denied")
}

// TestDeliverRenameRefusedKeepsPrevious: the fallback for a server that
// cannot rename over an existing file moves the old file aside instead of
// deleting it; it deleted the final file on any 5xx from RNTO, and when
// the rename then failed again, the node's previous, still unread message
// was gone and nothing replaced it.
func TestDeliverRenameRefusedKeepsPrevious(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "in"), 0o755)
	final := filepath.Join(root, "in", "Message_A_B.xml")
	prev := msgXML(t, "A", "B", 1, 3000)
	if err := os.WriteFile(final, prev, 0o644); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher("B", testConfig(serve(t, renameRefused{drv}, "in"), "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	next := msgXML(t, "A", "B", 2, 3000)
	err = p.Publish("", deliverMsg(t, mustHeader(t, next), next))
	if err == nil {
		t.Fatal("delivered although every rename is refused")
	}
	if !exists(final) {
		t.Fatalf("the rename failed (%v) and the previous message No 1 was deleted: the node's folder holds no message at all", err)
	}
}

// TestDeliverFailureRemovesTemp: a failed upload does not leave its
// .relay-*.part (as large as what was sent) on the server.
func TestDeliverFailureRemovesTemp(t *testing.T) {
	root := t.TempDir()
	p, err := NewPublisher("B", testConfig(startServer(t, root, "in"), "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := msgXML(t, "A", "B", 1, 50_000)
	m := deliverMsg(t, mustHeader(t, b), b[:40_000])
	m.Metadata.Set(exchange.MetaSize, "50000")
	if err := p.Publish("", m); err == nil {
		t.Fatal("short body delivered")
	}
	entries, _ := os.ReadDir(filepath.Join(root, "in"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".part") {
			fi, _ := e.Info()
			t.Fatalf("failed delivery left %s (%d bytes) on the server", e.Name(), fi.Size())
		}
	}
}

// unreadable is a server on which the message file can be listed but not
// downloaded (1C's service user wrote it 0600, a lock): every take fails.
type unreadable struct {
	ftpserver.Driver
	retrs atomic.Int32
}

func (d *unreadable) GetFile(ctx *ftpserver.Context, p string, off int64) (int64, io.ReadCloser, error) {
	if strings.Contains(p, "Message_") {
		d.retrs.Add(1)
		return 0, nil, errors.New("permission denied")
	}
	return d.Driver.GetFile(ctx, p, off)
}

// TestPickupUnreadableFileShown: a file that cannot be downloaded stays
// the pickup's trouble until it is read or gone; it was cleared by the next
// listing (a moment later), and `relay status` showed no pickup_error while
// the message sat in the outbox, failing every backoff.
func TestPickupUnreadableFileShown(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(root, "out")
	os.MkdirAll(out, 0o755)
	if _, err := exchangetest.WriteFile(out, hdr("A", "B", 1), 1000, exchange.FormatXML); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	d := &unreadable{Driver: drv}
	cfg := testConfig(serve(t, d, "out"), "pickup")
	p, _ := startPickup(t, cfg, config.After{Action: config.AfterDelete})
	deadline := time.Now().Add(5 * time.Second)
	for d.retrs.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if d.retrs.Load() < 2 {
		t.Fatalf("only %d download attempts", d.retrs.Load())
	}
	empty := 0
	for range 10 {
		if msg, _ := p.LastError(); msg == "" {
			empty++
		}
		time.Sleep(50 * time.Millisecond)
	}
	if empty > 0 {
		t.Fatalf("LastError empty in %d of 10 looks while Message_A_B.xml failed to download %d times", empty, d.retrs.Load())
	}
}

// countingListener counts the connections the server holds open.
type countingListener struct {
	net.Listener
	open atomic.Int32
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

// TestPickupCloseClosesConnection: Close of an FTP pickup closes its
// control connection; it stayed open until the idle timer (up to 30 s),
// holding one of the server's per-address connections, one more for each
// lease handover back and forth.
func TestPickupCloseClosesConnection(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "out"), 0o755)
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: raw}
	port := raw.Addr().(*net.TCPAddr).Port
	srv, err := ftpserver.NewServer(&ftpserver.Options{
		Driver: drv, Auth: &ftpserver.SimpleAuth{Name: "relay", Password: testPass},
		Perm: ftpserver.NewSimplePerm("relay", "relay"), Hostname: "127.0.0.1", PublicIP: "127.0.0.1",
		Port: port, Logger: quietLogger{},
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	t.Setenv("TEST_FTP_PASSWORD", testPass)
	cfg := testConfig("ftp://relay@127.0.0.1:"+strconv.Itoa(port)+"/out", "pickup")
	p, err := NewSubscriber("A", cfg, config.After{Action: config.AfterDelete}, nil, nil, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := p.Subscribe(ctx, ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a few listings
	p.Close()
	time.Sleep(500 * time.Millisecond)
	if n := ln.open.Load(); n > 0 {
		t.Fatalf("the pickup is closed and the server still holds %d connection(s) of it", n)
	}
}

// selfSignedCert is a certificate for 127.0.0.1 that no system root signs.
func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestCheckExplicitTLSBadCertificate: with tls: explicit, jlaffaye/ftp
// starts the TLS handshake at the first write after AUTH TLS (USER), so a
// certificate the relay cannot verify (self-signed, no ca_file) fails in
// Login; it is reported as step "tls handshake" with the hint, not as a
// login failure without one.
func TestCheckExplicitTLSBadCertificate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	root := t.TempDir()
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ftpserver.NewServer(&ftpserver.Options{
		Driver: drv, Auth: &ftpserver.SimpleAuth{Name: "relay", Password: testPass},
		Perm: ftpserver.NewSimplePerm("relay", "relay"), Hostname: "127.0.0.1", PublicIP: "127.0.0.1",
		Port: port, Logger: quietLogger{}, TLS: true, ExplicitFTPS: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.ListenAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	t.Setenv("TEST_FTP_PASSWORD", testPass)
	cfg := testConfig("ftp://relay@127.0.0.1:"+strconv.Itoa(port)+"/", "pickup")
	cfg.TLS = TLSExplicit
	var cerr error
	for range 50 { // the server needs a moment to listen
		if cerr = Check(context.Background(), "A", "pickup", cfg, nil); cerr == nil || !strings.Contains(cerr.Error(), "refused") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cerr == nil {
		t.Fatal("check passed against an unverifiable certificate")
	}
	for _, w := range []string{"tls handshake", "hint: check tls"} {
		if !strings.Contains(cerr.Error(), w) {
			t.Errorf("%q lacks %q", cerr, w)
		}
	}
}

// TestPickupMoveFolderMadeAgain: after: move:<folder> creates the folder
// once per connection (client.made) and forgets it when a move fails: an
// archive folder an operator removed made every commit fail for as long as
// the connection lived (with a poll_interval under 2 s, for good), and the
// file was taken again and again as a duplicate.
func TestPickupMoveFolderMadeAgain(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(root, "out")
	os.MkdirAll(out, 0o755)
	cfg := testConfig(startServer(t, root, "out"), "pickup")
	p, ch := startPickup(t, cfg, config.After{Action: config.AfterMove, Folder: "done"})
	go func() {
		for m := range ch {
			m.Ack()
		}
	}()
	src := filepath.Join(out, "Message_A_B.xml")
	moved := filepath.Join(out, "done", "Message_A_B.xml")
	wait := func(_ string, ok func() bool, d time.Duration) bool {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if ok() {
				return true
			}
		}
		return false
	}
	if err := os.WriteFile(src, msgXML(t, "A", "B", 1, 500), 0o644); err != nil {
		t.Fatal(err)
	}
	if !wait("first move", func() bool { return exists(moved) }, 5*time.Second) {
		t.Fatal("first file not moved")
	}
	if err := os.RemoveAll(filepath.Join(out, "done")); err != nil { // the operator clears the archive
		t.Fatal(err)
	}
	if err := os.WriteFile(src, msgXML(t, "A", "B", 2, 500), 0o644); err != nil {
		t.Fatal(err)
	}
	if !wait("second move", func() bool { return exists(moved) }, 4*time.Second) {
		msg, _ := p.LastError()
		t.Fatalf("No 2 not moved 4 s after it was written (the archive folder is never made again); pickup error: %s", msg)
	}
}

// uploadOnly is an upload-only (drop box) account, as vsftpd's
// download_enable=NO or proftpd's <Limit READ RETR> DenyAll give: STOR,
// RNFR/RNTO, DELE, SIZE and LIST work, every RETR is refused with 550.
type uploadOnly struct{ ftpserver.Driver }

func (uploadOnly) GetFile(*ftpserver.Context, string, int64) (int64, io.ReadCloser, error) {
	return 0, nil, errors.New("permission denied")
}

// TestDeliverUploadOnlyAccount: on an upload-only account every message is
// delivered: RETR of relay's own upload is refused too, so the refused
// read of the destination's file says "this account cannot download", not
// "this file cannot be read" (every message after the first failed for
// ever, "cannot be read to compare its number").
func TestDeliverUploadOnlyAccount(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "in"), 0o755)
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher("B", testConfig(serve(t, uploadOnly{drv}, "in"), "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for no := uint64(1); no <= 2; no++ {
		b := msgXML(t, "A", "B", no, 3000)
		if err := p.Publish("", deliverMsg(t, mustHeader(t, b), b)); err != nil {
			t.Fatalf("No %d on an upload-only account: %v", no, err)
		}
	}
	if no := fileNo(t, filepath.Join(root, "in", "Message_A_B.xml")); no != 2 {
		t.Fatalf("destination holds No %d", no)
	}
}

// TestDeliverUploadOnlyAccountWithoutSize: an upload-only account as
// ProFTPD's <Limit READ> DenyAll makes it: the READ group is RETR, SITE,
// SIZE and STAT, so SIZE is refused as well as RETR (LIST, STOR, RNFR/RNTO
// work). The size check after the upload asked SIZE and failed every
// delivery for good, where the README says such an account "cannot
// compare: relay logs that once and delivers" (found by review). A SIZE
// refused with a 5xx leaves the server's 226 and the bytes sent to go by
// (logged once): the message is delivered.
func TestDeliverUploadOnlyAccountWithoutSize(t *testing.T) {
	root := t.TempDir()
	p, err := NewPublisher("B", testConfig(withoutSize(t, root, false), "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := msgXML(t, "A", "B", 1, 3000)
	if err := p.Publish("", deliverMsg(t, mustHeader(t, b), b)); err != nil {
		t.Fatalf("No 1 on an upload-only account that refuses SIZE (proftpd <Limit READ>): %v", err)
	}
	if no := fileNo(t, filepath.Join(root, "in", "Message_A_B.xml")); no != 1 {
		t.Fatalf("destination holds No %d", no)
	}
}

// replyProxy sits in front of an FTP server's control port: it passes
// commands through and rewrites replies with rewrite. cut closes every
// connection it carries, after sending the client "421 Timeout." as vsftpd
// does when idle_session_timeout ends a session (or as any server restart,
// failover or NAT timeout drops it).
type replyProxy struct {
	mu      sync.Mutex
	clients []net.Conn
	uppers  []net.Conn
}

func (p *replyProxy) start(t *testing.T, upstream string, rewrite func(string) string) string {
	t.Helper()
	return loopback.Serve(t, func(c net.Conn) {
		up, err := net.Dial("tcp", upstream)
		if err != nil {
			c.Close()
			return
		}
		p.mu.Lock()
		p.clients = append(p.clients, c)
		p.uppers = append(p.uppers, up)
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		r := bufio.NewReader(up)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				if rewrite != nil {
					line = rewrite(line)
				}
				if _, werr := io.WriteString(c, line); werr != nil {
					return
				}
			}
			if err != nil {
				c.Close()
				return
			}
		}
	})
}

func (p *replyProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.clients {
		io.WriteString(c, "421 Timeout.\r\n")
		c.Close()
	}
	for _, c := range p.uppers {
		c.Close()
	}
	p.clients, p.uppers = nil, nil
}

// proxied serves drv and returns the URL of dir through a replyProxy.
func proxied(t *testing.T, drv ftpserver.Driver, dir string, rewrite func(string) string) (string, *replyProxy) {
	t.Helper()
	direct := serve(t, drv, dir)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	p := &replyProxy{}
	addr := p.start(t, u.Host, rewrite)
	return "ftp://relay@" + addr + "/" + dir, p
}

// TestDeliverAfterServerDroppedIdleConnection: the server ended relay's
// idle control connection (vsftpd's idle_session_timeout says "421
// Timeout." and closes; a restart does the same): the next delivery proves
// the connection dead and uses a fresh one (found by review: it failed on
// the dead one first, shown as the node's error).
func TestDeliverAfterServerDroppedIdleConnection(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "in"), 0o755); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	u, proxy := proxied(t, drv, "in", nil)
	p, err := NewPublisher("B", testConfig(u, "deliver"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	one := msgXML(t, "A", "B", 1, 3000)
	if err := p.Publish("", deliverMsg(t, mustHeader(t, one), one)); err != nil {
		t.Fatal(err)
	}
	proxy.cut() // the server drops the idle session
	time.Sleep(aliveCheckAfter + 200*time.Millisecond)
	two := msgXML(t, "A", "B", 2, 3000)
	if err := p.Publish("", deliverMsg(t, mustHeader(t, two), two)); err != nil {
		t.Errorf("the delivery right after the server closed the idle connection failed: %v (a fresh connection would have worked)", err)
	}
	if no := fileNo(t, filepath.Join(root, "in", "Message_A_B.xml")); no != 2 {
		t.Errorf("destination holds No %d, want 2", no)
	}
}

// TestDeliverTransientRetrRefusalNotDropBox: the destination's file and
// relay's own upload both answered RETR with a temporary 450 ("file busy")
// say nothing of an upload-only account: the delivery fails and is tried
// again rather than rename over a file it could not compare (found by
// review: No 2 replaced No 5).
func TestDeliverTransientRetrRefusalNotDropBox(t *testing.T) {
	err := deliverOlderOverNo5(t, func(drv ftpserver.Driver) string {
		// Every RETR refused; the proxy turns goftp's 551 into a transient 450.
		u, _ := proxied(t, uploadOnly{drv}, "in", func(line string) string {
			if strings.HasPrefix(line, "551 ") {
				return "450 File busy, try again later\r\n"
			}
			return line
		})
		return u
	})
	if err == nil {
		t.Fatal("delivered although the destination's file could not be compared")
	}
}

// TestIdleCheckStopsWithCtx: the NOOP that proves an idle connection
// alive ends with ctx: against a connection gone silent (a NAT that
// dropped the idle flow, a hung server) a stopping relay would otherwise
// wait io_timeout in it (found by review of the check).
func TestIdleCheckStopsWithCtx(t *testing.T) {
	var uses atomic.Int32
	s := &scriptedServer{cmd: func(verb, _ string, say func(string, ...any), _ func() net.Conn) bool {
		if verb == "NOOP" {
			return true // silent: the flow is gone
		}
		return false
	}}
	url := s.serve(t, "out")
	cfg := testConfig(url, "deliver")
	cfg.IOTimeout = config.Duration(10 * time.Second)
	c, err := newClient("B", "deliver", cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	if err := c.with(context.Background(), func(*ftp.ServerConn) error { uses.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(aliveCheckAfter + 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_ = c.with(ctx, func(*ftp.ServerConn) error { uses.Add(1); return nil })
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("with() returned %s after its ctx was cancelled (300 ms in), want at once: the alive-check NOOP ignores ctx", took.Round(100*time.Millisecond))
	}
}

// TestMoveListingFailsNothingReplaced: after: move:sent never replaces an
// earlier moved file, README says; Move looks for one by listing the
// archive folder, and when that listing failed (an archive grown past the
// 16 MiB listing bound in a few years, lowered here; a passing error) it
// renamed over sent/Message_A_B.xml all the same: the archived No 6 was
// overwritten by No 7 (found by review). The moved file gets a time stamp
// then.
func TestMoveListingFailsNothingReplaced(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(root, "out")
	sent := filepath.Join(out, "sent")
	if err := os.MkdirAll(sent, 0o755); err != nil {
		t.Fatal(err)
	}
	no6, no7 := msgXML(t, "A", "B", 6, 500), msgXML(t, "A", "B", 7, 600)
	if err := os.WriteFile(filepath.Join(sent, "Message_A_B.xml"), no6, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ { // earlier moves, timestamped
		n := time.Now().UTC().Add(-time.Duration(i)*time.Hour).Format("20060102T150405.000000000Z") + "_Message_A_B.xml"
		if err := os.WriteFile(filepath.Join(sent, n), no6, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(out, "Message_A_B.xml"), no7, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(startServer(t, root, "out"), "pickup")
	src := newSource(t, "A", cfg)
	src.c.listBounds = listBounds{bytes: 4 << 10, within: time.Minute} // the pickup folder lists within it, the archive not
	_, ch := runPickup(t, src, cfg, config.After{Action: config.AfterMove, Folder: "sent"})
	m := foldertest.Next(ch, 5*time.Second)
	if m == nil {
		t.Fatal("No 7 not taken")
	}
	m.Ack()
	waitGone(t, filepath.Join(out, "Message_A_B.xml"))
	if no := fileNo(t, filepath.Join(sent, "Message_A_B.xml")); no != 6 {
		t.Fatalf("the archived sent/Message_A_B.xml holds No %d after the move of No 7, want No 6: the earlier moved file was replaced (the archive folder's listing failed and Move renamed over it)", no)
	}
	if es, err := os.ReadDir(sent); err != nil || len(es) != 202 {
		t.Fatalf("sent/ holds %d files (%v), want 202: the 201 earlier and No 7", len(es), err)
	}
}

// TestEPSVDataPortBlockedFallsBackToPASV: the server answers EPSV, but the
// port it names cannot be reached (a firewall or NAT that knows PASV, not
// EPSV); PASV works. jlaffaye/ftp falls back to PASV only when the EPSV
// command itself fails, and every listing failed for good: the node's
// pickup stalled (found by review). The next connection asks with PASV.
func TestEPSVDataPortBlockedFallsBackToPASV(t *testing.T) {
	root, _ := outbox(t, "Message_A_B.xml", msgXML(t, "A", "B", 1, 1000))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	epsv := regexp.MustCompile(`\(\|\|\|\d+\|\)`)
	var epsvSeen atomic.Int32
	u, _ := proxied(t, drv, "out", func(line string) string {
		if strings.HasPrefix(line, "229 ") {
			epsvSeen.Add(1)
			return epsv.ReplaceAllString(line, "(|||"+strconv.Itoa(closed)+"|)")
		}
		return line
	})
	cfg := testConfig(u, "pickup")
	cfg.ConnectTimeout = config.Duration(2 * time.Second)
	src := newSource(t, "A", cfg)
	var lastErr error
	for i := 0; i < 3; i++ {
		files, err := src.List(context.Background())
		if err == nil && len(files) == 1 {
			return
		}
		lastErr = err
		time.Sleep(1100 * time.Millisecond) // past the re-dial backoff
	}
	if epsvSeen.Load() == 0 {
		t.Fatal("test setup: no EPSV went through the proxy")
	}
	t.Fatalf("3 listings failed on a server whose EPSV data port is unreachable but whose PASV works: %v (no fallback to PASV, no option to disable EPSV: the node stays stalled)", lastErr)
}

// uploadBeforeDele is a Unix FTP server on which 1C's upload of its next
// message (same name, higher number) completes after relay's last look at
// the file before its commit and before relay's DELE arrives: a few
// milliseconds between two commands of relay, ample for a small message.
// It writes under the file's name whatever name the DELE gives.
type uploadBeforeDele struct {
	ftpserver.Driver
	root  string
	name  string
	next  []byte
	fired atomic.Bool
}

func (d *uploadBeforeDele) DeleteFile(ctx *ftpserver.Context, p string) error {
	if strings.HasSuffix(p, d.name) && d.fired.CompareAndSwap(false, true) {
		full := filepath.Join(d.root, filepath.Dir(p), d.name) // 1C writes under the file's name
		_ = os.WriteFile(full, d.next, 0o644)
		later := time.Now().Add(10 * time.Second) // another mtime: 1C wrote it now
		_ = os.Chtimes(full, later, later)
	}
	return d.Driver.DeleteFile(ctx, p)
}

// TestCommitLeavesNewerUpload: the commit (after: delete) looked at the
// file (Stat, maybe a second download) and then sent DELE by name: 1C's
// next message written over the same name in between was deleted without
// ever being picked up (found by review). The commit holds the file under
// another name first now: what 1C writes meanwhile is a new file.
func TestCommitLeavesNewerUpload(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(root, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	no7, no8 := msgXML(t, "A", "B", 7, 5000), msgXML(t, "A", "B", 8, 6000)
	if err := os.WriteFile(filepath.Join(out, "Message_A_B.xml"), no7, 0o644); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	d := &uploadBeforeDele{Driver: drv, root: root, name: "Message_A_B.xml", next: no8}
	cfg := testConfig(serve(t, d, "out"), "pickup")
	_, ch := startPickup(t, cfg, config.After{Action: config.AfterDelete})
	m := foldertest.Next(ch, 5*time.Second)
	if m == nil {
		t.Fatal("No 7 not taken")
	}
	if h, _ := exchange.HeaderOf(m); h.MessageNo != 7 {
		t.Fatalf("took No %d first", h.MessageNo)
	}
	m.Ack()
	deadline := time.Now().Add(5 * time.Second)
	for !d.fired.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !d.fired.Load() {
		t.Fatal("no DELE came")
	}
	// No 8 must either stay in the folder or be emitted.
	if m := foldertest.Next(ch, 3*time.Second); m != nil {
		if h, _ := exchange.HeaderOf(m); h.MessageNo == 8 {
			m.Ack()
			return
		}
		m.Ack()
	}
	if _, err := os.Stat(filepath.Join(out, "Message_A_B.xml")); err != nil {
		t.Fatalf("1C's No 8, written over Message_A_B.xml after the commit's check of No 7 and before its DELE, was deleted by relay without being picked up (%v): the message is lost (a sequential channel waits for it for ever)", err)
	}
}

// renameStampsMTime is a server whose rename gives the file a new mtime:
// an FTP front end on object storage (S3, GCS, Azure: SFTPGo, AWS
// Transfer Family), where a rename is a copy and a delete and the copy's
// time is the time of the copy.
type renameStampsMTime struct {
	ftpserver.Driver
	root string
}

func (d renameStampsMTime) Rename(ctx *ftpserver.Context, from, to string) error {
	if err := d.Driver.Rename(ctx, from, to); err != nil {
		return err
	}
	now := time.Now()
	return os.Chtimes(filepath.Join(d.root, to), now, now)
}

// TestCommitOnRenameStampingServer: the commit renames the file to
// relay-commit-<name> and compared the held file's mtime with the one
// taken: on a server whose rename stamps a new mtime every commit saw a
// "changed" file, and the same message was taken again and again, never
// deleted (found by review). The content decides there now.
func TestCommitOnRenameStampingServer(t *testing.T) {
	root, out := outbox(t, "Message_A_B.xml", msgXML(t, "A", "B", 7, 3000))
	p := filepath.Join(out, "Message_A_B.xml")
	old := time.Now().Add(-time.Hour).Truncate(time.Minute).Add(17 * time.Second)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(serve(t, renameStampsMTime{drv, root}, "out"), "pickup")
	// A settle past a second (the FTP default is 5 s): a rename's new
	// mtime and the listed one fall in different seconds.
	cfg.Settle, cfg.IncompleteTimeout = config.Duration(1200*time.Millisecond), config.Duration(10*time.Second)
	_, ch := startPickup(t, cfg, config.After{Action: config.AfterDelete})
	taken := 0
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case m := <-ch:
			taken++
			m.Ack()
		case <-time.After(100 * time.Millisecond):
		}
		if taken >= 1 && !exists(p) && !exists(filepath.Join(out, folder.HeldName("Message_A_B.xml"))) {
			break
		}
	}
	if taken > 1 || exists(p) {
		t.Fatalf("No 7 taken %d times in 8 s and still in the folder (%v): the server's rename gives the file a new mtime, and every commit found the held file \"changed\"", taken, exists(p))
	}
}

// slowDele is a server whose DELE takes a while (a busy NAS, a large
// file on a slow disk, a long round trip).
type slowDele struct {
	ftpserver.Driver
}

func (d slowDele) DeleteFile(ctx *ftpserver.Context, p string) error {
	time.Sleep(600 * time.Millisecond)
	return d.Driver.DeleteFile(ctx, p)
}

// TestSharedFolderHeldFileLeftToItsNode: two nodes' pickups read one FTP
// folder (each takes only its own files: ForAnotherNode). A's commit holds
// its file as relay-commit-Message_A_C.xml; B's scan gave it its name back
// in the middle of A's commit (found by review of the give-back, since
// removed): A's DELE failed and the file came again. A held file is A's
// as its message name is.
func TestSharedFolderHeldFileLeftToItsNode(t *testing.T) {
	root, out := outbox(t, "Message_A_C.xml", msgXML(t, "A", "C", 3, 3000))
	p := filepath.Join(out, "Message_A_C.xml")
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	u := serve(t, slowDele{drv}, "out")
	cfgA, cfgB := testConfig(u, "pickup"), testConfig(u, "pickup")
	pa, chA := runPickup(t, newSource(t, "A", cfgA), cfgA, config.After{Action: config.AfterDelete})
	_, chB := runPickup(t, newSource(t, "B", cfgB), cfgB, config.After{Action: config.AfterDelete})
	taken := 0
	var lastErr string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case m := <-chA:
			taken++
			m.Ack()
		case m := <-chB:
			m.Ack()
			t.Fatalf("B took %s", m.Metadata.Get(exchange.MetaFileName))
		case <-time.After(100 * time.Millisecond):
		}
		if msg, _ := pa.LastError(); msg != "" {
			lastErr = msg
		}
		if taken == 1 && !exists(p) && !exists(filepath.Join(out, folder.HeldName("Message_A_C.xml"))) {
			time.Sleep(300 * time.Millisecond)
			if !exists(p) {
				break
			}
		}
	}
	if taken != 1 || exists(p) || lastErr != "" {
		t.Fatalf("A's file taken %d times, still there %v, A's error %q: B's pickup touched A's held file during A's commit", taken, exists(p), lastErr)
	}
}

// TestRefusedPASVSwitchesBack: one data connection that cannot be opened
// (a port the server named closed for a moment) switches the client to
// PASV; a server that refuses PASV answers with an error reply, which
// never switched back: the node stalled for good (found by review). A
// PASV refused before any worked goes back to EPSV.
func TestRefusedPASVSwitchesBack(t *testing.T) {
	root, _ := outbox(t, "Message_A_B.xml", msgXML(t, "A", "B", 1, 1000))
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	var epsvCount atomic.Int32
	u, _ := proxied(t, drv, "out", func(line string) string {
		switch {
		case strings.HasPrefix(line, "229 "):
			if epsvCount.Add(1) == 1 {
				// The first data port is gone before relay connects.
				return "229 Entering Extended Passive Mode (|||1|)\r\n"
			}
		case strings.HasPrefix(line, "227 "):
			return "500 PASV not available on this connection\r\n"
		}
		return line
	})
	cfg := testConfig(u, "pickup")
	cfg.ConnectTimeout = config.Duration(2 * time.Second)
	src := newSource(t, "A", cfg)
	if _, err := src.List(context.Background()); err == nil {
		t.Fatal("test setup: the first listing went through")
	}
	var lastErr error
	for i := 0; i < 4; i++ {
		files, err := src.List(context.Background())
		if err == nil && len(files) == 1 {
			return
		}
		lastErr = err
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("after one failed data connection every listing fails: %v — switched to PASV, which the server refuses, and never back to the EPSV that works", lastErr)
}

// TestFailingCommitLeavesNewerUpload: a commit that keeps failing (a move
// folder that cannot be made) leaves the file under its held name, taken
// again as its message (a duplicate) and committed again later; 1C's next
// message written under the name meanwhile is taken, never replaced (found
// by review: giving the held file its name back could rename it over it).
func TestFailingCommitLeavesNewerUpload(t *testing.T) {
	root, out := outbox(t, "Message_A_B.xml", msgXML(t, "A", "B", 7, 3000))
	p := filepath.Join(out, "Message_A_B.xml")
	// "sent" is a file: the move folder cannot be made, every move fails.
	if err := os.WriteFile(filepath.Join(out, "sent"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	pk, ch := startPickup(t, testConfig(startServer(t, root, "out"), "pickup"), config.After{Action: config.AfterMove, Folder: "sent"})
	m := foldertest.Next(ch, 5*time.Second)
	if m == nil {
		t.Fatal("No 7 not taken")
	}
	m.Ack()
	deadline := time.Now().Add(5 * time.Second)
	for msg, _ := pk.LastError(); !strings.Contains(msg, "after move:sent of Message_A_B.xml failed"); msg, _ = pk.LastError() {
		if time.Now().After(deadline) {
			t.Fatalf("pickup error %q: want the failed move shown", msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.WriteFile(p, msgXML(t, "A", "B", 8, 4000), 0o644); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		m := foldertest.Next(ch, time.Second)
		if m == nil {
			continue
		}
		h, _ := exchange.HeaderOf(m)
		m.Ack()
		if h.MessageNo == 8 {
			if no := fileNo(t, filepath.Join(out, folder.HeldName("Message_A_B.xml"))); no != 7 && no != 8 {
				t.Fatalf("the held file holds No %d", no)
			}
			return
		}
	}
	t.Fatal("1C's No 8, written while No 7's move kept failing, was never taken")
}

// outbox is an FTP root whose folder out holds the file name.
func outbox(t *testing.T, name string, data []byte) (root, out string) {
	t.Helper()
	root = t.TempDir()
	out = filepath.Join(root, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return root, out
}

// withoutSize serves root/in to an account that may upload and rename but
// not download or ask SIZE (ProFTPD's <Limit READ>), nor list when
// noList, and returns its URL.
func withoutSize(t *testing.T, root string, noList bool) string {
	t.Helper()
	os.MkdirAll(filepath.Join(root, "in"), 0o755)
	drv, err := file.NewDriver(root)
	if err != nil {
		t.Fatal(err)
	}
	var account ftpserver.Driver = uploadOnly{drv}
	if noList {
		account = noListing{uploadOnly{drv}}
	}
	u, _ := proxied(t, account, "in", func(line string) string {
		if strings.HasPrefix(line, "213 ") { // SIZE's answer
			return "550 SIZE: Operation not permitted\r\n"
		}
		return line
	})
	return u
}

// noListing is an account as a write-only drop box makes it (ProFTPD's
// <Limit READ DIRS> DenyAll): RETR, SIZE and the listings refused; STOR
// and rename allowed.
type noListing struct{ uploadOnly }

func (noListing) ListDir(*ftpserver.Context, string, func(os.FileInfo) error) error {
	return errors.New("permission denied")
}

// TestDeliverKeepsUnreadOnReadDeniedAccount: a sequential node's account
// as ProFTPD's <Limit READ> DenyAll makes it (RETR and SIZE refused, STOR,
// rename and listings allowed): No 2 came before the node acknowledged
// No 1 and was written over it, the refused SIZE taken for "no file
// there" (found by review). The folder's listing tells now, for an .xml
// and a zip; once the file is gone, No 2 goes. An account that may not
// list either (<Limit READ DIRS>) cannot tell: the file is taken to be
// there until the node acknowledges it (found by review: a refused
// listing was taken for an empty folder).
func TestDeliverKeepsUnreadOnReadDeniedAccount(t *testing.T) {
	for _, lists := range []bool{true, false} {
		root := t.TempDir()
		p, err := NewPublisher("B", testConfig(withoutSize(t, root, !lists), "deliver"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for _, format := range []exchange.Format{exchange.FormatXML, exchange.FormatZip} {
			what := fmt.Sprintf("%s, listings allowed %v", format, lists)
			dst := filepath.Join(root, "in", exchange.FileName("A", "B", format))
			publish := func(no uint64, k exchange.Keep) error {
				m, _ := keptMsg(t, hdr("A", "B", no), format, k)
				return p.Publish("", m)
			}
			if err := publish(1, exchange.Keep{On: true}); err != nil {
				t.Fatalf("%s: No 1: %v", what, err)
			}
			one, _ := os.ReadFile(dst)
			err := publish(2, exchange.Keep{On: true, Delivered: 1})
			if got, _ := os.ReadFile(dst); !errors.Is(err, exchange.ErrUnread) || !bytes.Equal(got, one) {
				t.Fatalf("%s: No 2 over No 1, which B has not acknowledged, on an account that may not RETR or SIZE: %v, want ErrUnread and No 1 kept", what, err)
			}
			keep := exchange.Keep{On: true, Delivered: 1}
			os.Remove(dst)
			if !lists {
				if err := publish(2, keep); !errors.Is(err, exchange.ErrUnread) {
					t.Fatalf("%s: No 2 once No 1 is gone, which this account cannot see: %v, want it held until acknowledged", what, err)
				}
				keep.Acked = 1
			}
			if err := publish(2, keep); err != nil {
				t.Fatalf("%s: No 2 once No 1 is gone or acknowledged: %v", what, err)
			}
			if _, err := os.Stat(dst); err != nil {
				t.Fatalf("%s: No 2 not there: %v", what, err)
			}
		}
	}
}
